"""The node's parts on their own: recording upload rules, the access cache, backoff."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from trioport.authclient import APIError, AuthServiceUnavailable
from trioport.errors import CompareFailed
from trioport.roles.node.access import AccessChecker
from trioport.roles.node.authlink import backoff_delay
from trioport.roles.node.recorder import RecordingUploader, parse_recording


class FakeAuth:
    """Stands in for the auth service's recording API, with scripted failures."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.completed: int | None = None
        #: Per call name, exceptions to raise on the next calls.
        self.failures: dict[str, list[BaseException]] = {}
        self.store_then_fail = 0
        self.access_calls = 0
        self.access_reply: dict[str, Any] = {"allowed": True, "reason": "ok", "options": {}}

    def _maybe_fail(self, name: str) -> None:
        queue = self.failures.get(name)
        if queue:
            raise queue.pop(0)

    async def upload_chunk(self, sid: str, index: int, data: bytes) -> int:
        self._maybe_fail("upload")
        if index != len(self.chunks):
            raise CompareFailed(f"expected chunk {len(self.chunks)}")
        self.chunks.append(data)
        if self.store_then_fail:
            self.store_then_fail -= 1
            raise AuthServiceUnavailable("the reply was lost")
        return len(self.chunks)

    async def next_chunk(self, sid: str) -> int:
        return len(self.chunks)

    async def complete_recording(self, sid: str, *, chunks: int | None = None) -> dict[str, Any]:
        self._maybe_fail("complete")
        assert chunks == len(self.chunks)
        self.completed = chunks
        return {"sid": sid}

    async def access(self, user: str, **kw: Any) -> dict[str, Any]:
        self.access_calls += 1
        self._maybe_fail("access")
        return self.access_reply


class FakeLink:
    def __init__(self, auth: FakeAuth) -> None:
        self.auth = auth

    async def call(
        self, fn: Callable[[Any], Awaitable[Any]], *, within: float | None = None
    ) -> Any:
        await trio.lowlevel.checkpoint()
        return await fn(self.auth)


async def _record(
    uploader: RecordingUploader, outputs: list[bytes], *, chunk: int | None = None
) -> Any:
    rec = uploader.start("sid-1", {"kind": "exec", "user": "alice"})
    for data in outputs:
        await rec.output(data)
        await trio.sleep(0.01)  # as a session's output comes, a little at a time
    rec.resize(120, 40)
    rec.exit(status=0)
    rec.finish()
    with trio.fail_after(60):
        await rec.done.wait()
    return rec


async def test_a_recording_arrives_whole_in_order(autojump_clock: trio.testing.MockClock) -> None:
    auth = FakeAuth()
    async with trio.open_nursery() as nursery:
        uploader = RecordingUploader(FakeLink(auth), nursery, chunk_bytes=1000)  # type: ignore[arg-type]
        outputs = [bytes([i]) * 700 for i in range(10)]
        rec = await _record(uploader, outputs)
    assert rec.completed.is_set() and not rec.failed
    assert auth.completed == len(auth.chunks) > 1
    header, events = parse_recording(b"".join(auth.chunks))
    assert header["format"] == "trioport-recording"
    assert (header["sid"], header["user"]) == ("sid-1", "alice")
    assert b"".join(e.data for e in events if e.type == "o") == b"".join(outputs)
    assert [e.type for e in events[-3:]] == ["r", "exit", "end"]


async def test_an_outage_and_a_lost_reply_neither_lose_nor_duplicate_chunks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    auth = FakeAuth()
    auth.failures["upload"] = [AuthServiceUnavailable("down")] * 5
    auth.store_then_fail = 1  # the first stored chunk's reply is lost
    auth.failures["complete"] = [AuthServiceUnavailable("down")] * 3
    async with trio.open_nursery() as nursery:
        uploader = RecordingUploader(FakeLink(auth), nursery, chunk_bytes=100)  # type: ignore[arg-type]
        outputs = [b"x" * 150, b"y" * 150, b"z" * 150]
        rec = await _record(uploader, outputs)
    assert rec.completed.is_set()
    assert auth.completed == len(auth.chunks) > 1
    _, events = parse_recording(b"".join(auth.chunks))
    assert b"".join(e.data for e in events if e.type == "o") == b"".join(outputs)


async def test_a_refused_upload_is_never_marked_complete(
    autojump_clock: trio.testing.MockClock,
) -> None:
    auth = FakeAuth()
    auth.failures["upload"] = [APIError("too big", status=413, kind="too_large")]
    async with trio.open_nursery() as nursery:
        uploader = RecordingUploader(FakeLink(auth), nursery, chunk_bytes=100)  # type: ignore[arg-type]
        rec = await _record(uploader, [b"a" * 500, b"b" * 500])
    assert rec.failed and not rec.completed.is_set()
    assert auth.completed is None


async def test_output_waits_when_the_upload_falls_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    auth = FakeAuth()
    auth.failures["upload"] = [AuthServiceUnavailable("down")] * 10
    async with trio.open_nursery() as nursery:
        uploader = RecordingUploader(
            FakeLink(auth),  # type: ignore[arg-type]
            nursery,
            chunk_bytes=1000,
            max_buffer=4000,
        )
        rec = uploader.start("sid-2", {})
        written = 0
        with trio.move_on_after(0.5):
            while True:
                await rec.output(b"q" * 1000)
                written += 1000
        # Blocked: the buffer holds no more than its limit (plus one event).
        assert rec.pending <= 4000 + 2000
        assert written < 20_000
        rec.finish()
        with trio.fail_after(600):
            await rec.done.wait()
    assert rec.completed.is_set()


async def test_access_answers_are_cached_briefly_and_kept_through_an_outage() -> None:
    auth = FakeAuth()
    now = [0.0]
    checker = AccessChecker(
        FakeLink(auth),  # type: ignore[arg-type]
        fresh=10,
        stale=300,
        clock=lambda: now[0],
    )
    labels = {"env": "test"}
    assert await checker.check("alice", "root", labels)
    assert await checker.check("alice", "root", labels)
    assert auth.access_calls == 1
    # Other labels are another question.
    assert await checker.check("alice", "root", {"env": "prod"})
    assert auth.access_calls == 2
    now[0] = 11
    auth.failures["access"] = [AuthServiceUnavailable("down")]
    assert await checker.check("alice", "root", labels)  # stale, but auth is away
    now[0] = 400
    auth.failures["access"] = [AuthServiceUnavailable("down")]
    refused = await checker.check("alice", "root", labels)
    assert not refused and "cannot be reached" in refused.reason
    auth.access_reply = {"allowed": False, "reason": "no role allows login 'root'"}
    denied = await checker.check("alice", "root", labels)
    assert not denied and denied.reason == "no role allows login 'root'"


@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 10, 100])
def test_backoff_grows_with_jitter_and_is_capped(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(30.0, 0.5 * 2**attempt)
    delays = [backoff_delay(attempt, rng=rng) for _ in range(50)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1
