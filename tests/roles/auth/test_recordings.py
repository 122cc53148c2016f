"""Session recordings: ordered chunks, a completion marker, and nothing half-finished listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from trioport.errors import AlreadyExists, CompareFailed, NotFound, StoreError
from trioport.roles.auth.recordings import MAX_CHUNK_BYTES, Recordings

SID = "3f1c2b4a-5d6e-4f70-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def records(tmp_path: Path) -> Recordings:
    return Recordings(tmp_path / "records")


async def upload(records: Recordings, sid: str, chunks: list[bytes]) -> None:
    for index, chunk in enumerate(chunks):
        assert await records.append(sid, index, chunk) == index + 1


async def test_chunks_then_completion(records: Recordings, tmp_path: Path) -> None:
    await upload(records, SID, [b"hello ", b"", b"world\r\n"])
    assert await records.list() == []  # not complete yet
    assert await records.list_incomplete() == [SID]
    with pytest.raises(NotFound):
        await records.fetch(SID)
    info = await records.complete(SID, chunks=3)
    assert info.sid == SID and info.size == 13
    assert await records.fetch(SID) == b"hello world\r\n"
    assert await records.fetch(SID, offset=6, size=5) == b"world"
    assert [r.sid for r in await records.list()] == [SID]
    assert await records.list_incomplete() == []
    files = sorted(p.name for p in (tmp_path / "records").iterdir())
    assert files == [f"{SID}.rec"]
    assert (tmp_path / "records" / f"{SID}.rec").stat().st_mode & 0o777 == 0o600


async def test_gaps_and_duplicates_are_refused(records: Recordings) -> None:
    await records.append(SID, 0, b"a")
    with pytest.raises(CompareFailed, match=r"chunk 2 .* out of order; expected chunk 1"):
        await records.append(SID, 2, b"c")
    with pytest.raises(CompareFailed, match=r"chunk 0 .* a duplicate; expected chunk 1"):
        await records.append(SID, 0, b"a")
    assert await records.next_index(SID) == 1
    await records.append(SID, 1, b"b")
    await records.complete(SID)
    assert await records.fetch(SID) == b"ab"


async def test_an_interrupted_upload_is_never_complete(records: Recordings, tmp_path: Path) -> None:
    await upload(records, SID, [b"partial"])
    # The uploader went away. A fresh service on the same directory sees the same.
    again = Recordings(tmp_path / "records")
    assert await again.list() == []
    assert await again.list_incomplete() == [SID]
    with pytest.raises(NotFound):
        await again.fetch(SID)
    assert await again.next_index(SID) == 1  # and it can resume


async def test_completion_checks_the_chunk_count(records: Recordings) -> None:
    await upload(records, SID, [b"a", b"b"])
    with pytest.raises(CompareFailed, match="has 2 chunks, the uploader sent 3"):
        await records.complete(SID, chunks=3)
    assert await records.list() == []


async def test_completed_recordings_are_final(records: Recordings) -> None:
    await upload(records, SID, [b"a"])
    await records.complete(SID)
    with pytest.raises(AlreadyExists):
        await records.append(SID, 1, b"b")
    with pytest.raises(AlreadyExists):
        await records.complete(SID)
    with pytest.raises(NotFound):
        await records.complete("never-started")


async def test_a_torn_write_is_cut_off_on_resume(records: Recordings, tmp_path: Path) -> None:
    await upload(records, SID, [b"first"])
    # The service died after writing chunk 1's bytes but before counting them.
    with (tmp_path / "records" / f"{SID}.part").open("ab") as f:
        f.write(b"GARBAGE")
    state = json.loads((tmp_path / "records" / f"{SID}.part.state").read_text())
    assert state == {"chunks": 1, "size": 5}
    await records.append(SID, 1, b"second")
    await records.complete(SID)
    assert await records.fetch(SID) == b"firstsecond"


@pytest.mark.parametrize("sid", ["../../etc/passwd", "", "a/b", ".hidden", "x" * 200, "a b"])
async def test_session_ids_cannot_escape_the_directory(records: Recordings, sid: str) -> None:
    with pytest.raises(ValueError, match="session id"):
        await records.append(sid, 0, b"x")
    with pytest.raises(ValueError, match="session id"):
        await records.fetch(sid)


async def test_limits(tmp_path: Path) -> None:
    records = Recordings(tmp_path / "records", max_size=10)
    with pytest.raises(ValueError, match="at most"):
        await records.append(SID, 0, b"x" * (MAX_CHUNK_BYTES + 1))
    with pytest.raises(ValueError, match="non-negative"):
        await records.append(SID, -1, b"x")
    await records.append(SID, 0, b"x" * 10)
    with pytest.raises(StoreError, match="exceed 10 bytes"):
        await records.append(SID, 1, b"y")


async def test_concurrent_uploads_of_different_sessions(records: Recordings) -> None:
    sids = [f"s{i}" for i in range(5)]
    async with trio.open_nursery() as nursery:
        for sid in sids:
            nursery.start_soon(upload, records, sid, [sid.encode() * 3, b"|", b"end"])
    for sid in sids:
        await records.complete(sid)
        assert await records.fetch(sid) == sid.encode() * 3 + b"|end"
    assert sorted(r.sid for r in await records.list()) == sids


async def test_a_cut_session_keeps_its_recording_flagged_interrupted(
    records: Recordings, tmp_path: Path
) -> None:
    await upload(records, SID, [b"partial ", b"output"])
    info = await records.interrupt(SID)
    assert (info.size, info.interrupted) == (14, True)
    assert await records.fetch(SID) == b"partial output"
    [listed] = await records.list()
    assert (listed.sid, listed.interrupted) == (SID, True)
    assert await records.list_incomplete() == []
    # Closed for good: no more chunks, no completion, no second interruption.
    with pytest.raises(AlreadyExists, match="interrupted"):
        await records.append(SID, 2, b"late")
    with pytest.raises(AlreadyExists, match="interrupted"):
        await records.complete(SID)
    with pytest.raises(AlreadyExists):
        await records.interrupt(SID)
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == [f"{SID}.cut"]


async def test_only_an_uploaded_recording_can_be_interrupted(records: Recordings) -> None:
    with pytest.raises(NotFound):
        await records.interrupt(SID)
    await upload(records, SID, [b"whole"])
    await records.complete(SID)
    with pytest.raises(AlreadyExists, match="complete"):
        await records.interrupt(SID)
