"""The audit log: Teleport's names and codes, one JSON file per day, escaping, search."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import trio

from trioport.roles.auth import audit_log
from trioport.roles.auth.audit_log import AuditLog, escape_controls

from .conftest import START, FakeClock


@pytest.fixture
async def log(tmp_path: Path, clock: FakeClock) -> AuditLog:
    audit = AuditLog(tmp_path / "log", clock=clock)
    yield audit  # type: ignore[misc]
    await audit.aclose()


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


async def test_event_is_one_json_line_with_teleport_fields(log: AuditLog, tmp_path: Path) -> None:
    await log.emit(
        audit_log.SESSION_START,
        user="alice",
        login="root",
        sid="5a2c6d5e-0000-4000-8000-000000000001",
        server_id="node-uuid",
        addr_local="10.0.0.5:3022",
        addr_remote="192.0.2.7:51234",
        success=True,
    )
    day = dt.datetime.fromtimestamp(START, tz=dt.UTC).strftime("%Y-%m-%d")
    (record,) = read_lines(tmp_path / "log" / f"{day}.log")
    assert record["event"] == "session.start"
    assert record["code"] == "T2000I"
    assert record["time"] == "2023-11-14T22:13:20Z"
    assert record["user"] == "alice"
    assert record["login"] == "root"
    assert record["sid"] == "5a2c6d5e-0000-4000-8000-000000000001"
    assert record["server_id"] == "node-uuid"
    assert record["addr.local"] == "10.0.0.5:3022"
    assert record["addr.remote"] == "192.0.2.7:51234"
    assert record["success"] is True
    assert len(str(record["uid"])) == 36


def test_codes_are_teleports() -> None:
    expected = {
        "T1000I": "user.login",
        "T1000W": "user.login",
        "T1002I": "user.create",
        "T2000I": "session.start",
        "T2001I": "session.join",
        "T2002I": "resize",
        "T2003I": "session.leave",
        "T2004I": "session.end",
        "T3002I": "exec",
        "T3003I": "port",
        "T3007W": "auth",
        "TC000I": "cert.create",
        "TJT00I": "join_token.create",
        "T9000I": "role.created",
        "TS001I": "sftp",
    }
    for code, name in expected.items():
        assert audit_log.EVENT_CODES[code].event == name


async def test_one_file_per_utc_day(log: AuditLog, clock: FakeClock, tmp_path: Path) -> None:
    await log.emit(audit_log.EXEC, user="alice", fields={"command": "uptime"})
    clock.advance(86400)
    await log.emit(audit_log.EXEC, user="alice", fields={"command": "date"})
    files = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert files == ["2023-11-14.log", "2023-11-15.log"]
    assert read_lines(tmp_path / "log" / "2023-11-15.log")[0]["command"] == "date"


async def test_control_characters_are_escaped(log: AuditLog, tmp_path: Path) -> None:
    hostile = 'alice\x1b[2J\r\n{"event":"forged"}\u202etxt.exe\x00'
    await log.emit(
        audit_log.USER_LOGIN_FAILURE, user=hostile, fields={"env": {"X\x07": ["a\x9bb"]}}
    )
    text = next((tmp_path / "log").iterdir()).read_text("utf-8")
    assert text.count("\n") == 1  # no forged second line
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    (record,) = read_lines(next((tmp_path / "log").iterdir()))
    assert record["user"] == ('alice\\x1b[2J\\x0d\\x0a{"event":"forged"}\\u202etxt.exe\\x00')
    assert record["env"] == {"X\\x07": ["a\\x9bb"]}
    assert record["event"] == "user.login"


def test_escape_keeps_printable_unicode() -> None:
    assert escape_controls("Zoë 東京 ✓") == "Zoë 東京 ✓"
    assert escape_controls("tab\there") == "tab\\x09here"


async def test_long_fields_are_cut(log: AuditLog) -> None:
    event = await log.emit(audit_log.EXEC, fields={"command": "x" * 100_000})
    command = event.spec.fields["command"]
    assert isinstance(command, str)
    assert len(command) < 20_000 and command.endswith("more chars]")


async def test_reserved_field_names_are_refused(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="reserved"):
        await log.emit(audit_log.EXEC, fields={"code": "T0000I"})


async def test_search_by_time_range_and_type(log: AuditLog, clock: FakeClock) -> None:
    await log.emit(audit_log.USER_LOGIN, user="alice", success=True)
    clock.advance(3600)
    await log.emit(audit_log.USER_LOGIN_FAILURE, user="bob", success=False)
    clock.advance(86400)
    await log.emit(audit_log.SESSION_START, user="alice", sid="s1")
    everything = await log.search(since=START - 1, until=clock.now + 1)
    assert [e.spec.code for e in everything] == ["T1000I", "T1000W", "T2000I"]
    logins = await log.search(since=START - 1, until=clock.now + 1, events=["user.login"])
    assert [e.spec.fields["user"] for e in logins] == ["alice", "bob"]
    failures = await log.search(since=START - 1, until=clock.now + 1, events=["T1000W"])
    assert [e.spec.fields["user"] for e in failures] == ["bob"]
    later = await log.search(since=START + 1800, until=clock.now + 1)
    assert [e.spec.event for e in later] == ["user.login", "session.start"]
    assert len(await log.search(since=START - 1, until=clock.now + 1, limit=2)) == 2
    assert await log.search(since=clock.now + 1, until=START) == []


async def test_search_skips_a_torn_line(log: AuditLog, tmp_path: Path) -> None:
    await log.emit(audit_log.USER_CREATE, user="admin", fields={"name": "alice"})
    path = next((tmp_path / "log").iterdir())
    with path.open("a") as f:
        f.write('{"event": "user.cre')  # a write cut short by a crash
        f.write("\n")
    await log.emit(audit_log.USER_CREATE, user="admin", fields={"name": "bob"})
    found = await log.search(since=START - 1, until=START + 1)
    assert [e.spec.fields["name"] for e in found] == ["alice", "bob"]


async def test_concurrent_emits_never_interleave(log: AuditLog, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(
                lambda i=i: log.emit(audit_log.RESIZE, sid="s", fields={"size": f"{i}:" * 500})
            )
    records = read_lines(next((tmp_path / "log").iterdir()))
    assert len(records) == 50
    assert all(r["code"] == "T2002I" for r in records)


async def test_log_file_is_private(log: AuditLog, tmp_path: Path) -> None:
    await log.emit(audit_log.USER_LOGIN, user="alice")
    path = next((tmp_path / "log").iterdir())
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "log").stat().st_mode & 0o777 == 0o700


async def test_emit_after_close_is_refused(log: AuditLog) -> None:
    await log.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await log.emit(audit_log.USER_LOGIN, user="alice")
