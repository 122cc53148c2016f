"""The SQLite file locked by another process for 30 seconds, under a running cluster.

Another process takes SQLite's write lock on the auth service's database (as a
backup tool or a stray ``sqlite3`` shell would) and holds it for 30 seconds.
Meanwhile writes fail with an error that names the locked file, reads keep
working, and ``trioport run`` keeps running; once the lock is gone, writes work
again without a restart, and SQLite's own integrity check finds nothing wrong.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from .cluster import Ports, free_ports, program, run, start, write_config

#: How long the other process holds the lock.
HOLD_SECONDS = 30.0

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
"""


def test_a_database_locked_for_30_seconds_gives_clear_errors_then_recovers(
    tmp_path: Path,
) -> None:
    ports = Ports(*free_ports(4))
    config = write_config(tmp_path / "trioport.yaml", tmp_path / "data", ports)
    process = start(config, tmp_path / "trioport.log")
    tctl = [program("tctl"), "--config", str(config)]
    database = tmp_path / "data" / "backend" / "sqlite.db"
    try:
        assert database.exists()
        assert run([*tctl, "users", "add", "before", "--logins=root"]).returncode == 0
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(database), str(HOLD_SECONDS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdout is not None
        assert locker.stdout.readline() == "locked\n"
        locked_until = time.monotonic() + HOLD_SECONDS
        refusals = []
        late = []
        while time.monotonic() < locked_until - 8:  # leave room for one busy wait
            added = run([*tctl, "users", "add", f"during{len(refusals)}", "--logins=root"])
            # On a busy machine an attempt may still be waiting when the lock goes:
            # only those that ended while it was held must have been refused.
            (refusals if time.monotonic() < locked_until else late).append(added)
            # Reads do not wait for the writer.
            listed = run([*tctl, "users", "ls"])
            assert listed.returncode == 0 and "before" in listed.stdout
            assert process.popen.poll() is None, process.stderr
        assert refusals
        for refused in refusals:
            assert refused.returncode != 0
            assert "locked by another process" in refused.stderr, refused.stderr
            assert str(database) in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1  # one line, no traceback
        assert locker.stdout.readline() == "released\n"
        locker.wait(10)
        locker.stdout.close()
        # No restart: the next write just works, and nothing half-written appeared.
        assert run([*tctl, "users", "add", "after", "--logins=root"]).returncode == 0
        names = run([*tctl, "users", "ls"]).stdout
        assert "before" in names and "after" in names
        words = set(names.split())
        for i, _refused in enumerate(refusals):
            assert f"during{i}" not in words  # a refused write left nothing behind
    finally:
        status = process.stop()
    assert status == 0, process.stderr
    assert "Traceback" not in process.stderr
    conn = sqlite3.connect(database)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
