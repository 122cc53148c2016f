"""One compliance suite, run against every backend (memory, sqlite, etcd).

Teleport keeps its backends honest with one suite (``lib/backend/test/suite.go``)
whose constructor returns the backend and a fake clock; this is ours. Expiry is
driven by the fake clock: reads hide an expired item as soon as the clock passes
its ``expires``. The DELETE event of an expired item comes from each backend's
own machinery (sweeper, or an etcd lease running out in real time), so those
tests wait for it without asserting how long it takes.
"""

from __future__ import annotations

import pytest
import trio

from tests.store.conftest import Harness
from trioport.errors import AlreadyExists, CompareFailed, NotFound
from trioport.store import Event, EventType, Item

#: Generous guard for anything asynchronous (an etcd lease needs ~1-2 s).
PATIENCE = 20


async def receive(events: trio.abc.ReceiveChannel[Event]) -> Event:
    with trio.fail_after(PATIENCE):
        return await events.receive()


async def receive_n(events: trio.abc.ReceiveChannel[Event], n: int) -> list[tuple[str, str]]:
    got = []
    for _ in range(n):
        event = await receive(events)
        got.append((event.type.value, event.item.key))
    return got


# --- basic reads and writes ---------------------------------------------------------


async def test_put_then_get_returns_the_value_and_a_revision(harness: Harness) -> None:
    db = harness.backend
    stored = await db.put(Item("/users/alice", b"\x00\xffalice"))
    assert stored.revision > 0
    got = await db.get("/users/alice")
    assert got == Item("/users/alice", b"\x00\xffalice", None, stored.revision)


async def test_values_keep_every_byte_and_keys_may_be_unicode(harness: Harness) -> None:
    db = harness.backend
    await db.put(Item("/bytes", bytes(range(256))))
    await db.put(Item("/empty", b""))
    await db.put(Item("/users/zoë/ключ", b"x"))
    assert (await db.get("/bytes")).value == bytes(range(256))
    assert (await db.get("/empty")).value == b""
    assert (await db.get("/users/zoë/ключ")).value == b"x"


async def test_get_of_a_missing_key_raises_not_found(harness: Harness) -> None:
    with pytest.raises(NotFound):
        await harness.backend.get("/nope")


async def test_put_overwrites_and_bumps_the_revision(harness: Harness) -> None:
    db = harness.backend
    first = await db.put(Item("/k", b"1"))
    second = await db.put(Item("/k", b"2"))
    assert second.revision > first.revision
    assert (await db.get("/k")).value == b"2"


async def test_create_writes_only_if_absent(harness: Harness) -> None:
    db = harness.backend
    created = await db.create(Item("/tokens/t1", b"first"))
    with pytest.raises(AlreadyExists):
        await db.create(Item("/tokens/t1", b"second"))
    assert await db.get("/tokens/t1") == created


async def test_update_writes_only_if_present(harness: Harness) -> None:
    db = harness.backend
    with pytest.raises(NotFound):
        await db.update(Item("/k", b"v"))
    await db.put(Item("/k", b"v"))
    updated = await db.update(Item("/k", b"w"))
    assert (await db.get("/k")) == updated
    assert updated.value == b"w"


async def test_compare_and_swap(harness: Harness) -> None:
    db = harness.backend
    with pytest.raises(CompareFailed):
        await db.compare_and_swap(Item("/k", b"a"), Item("/k", b"b"))
    await db.put(Item("/k", b"a"))
    with pytest.raises(CompareFailed):
        await db.compare_and_swap(Item("/k", b"other"), Item("/k", b"b"))
    assert (await db.get("/k")).value == b"a"
    swapped = await db.compare_and_swap(Item("/k", b"a"), Item("/k", b"b"))
    assert swapped.value == b"b"
    assert (await db.get("/k")) == swapped
    with pytest.raises(ValueError, match="compare_and_swap"):
        await db.compare_and_swap(Item("/k", b"b"), Item("/j", b"c"))


async def test_delete(harness: Harness) -> None:
    db = harness.backend
    await db.put(Item("/k", b"v"))
    await db.delete("/k")
    with pytest.raises(NotFound):
        await db.get("/k")
    with pytest.raises(NotFound):
        await db.delete("/k")


async def test_get_range_is_by_prefix_sorted_and_limited(harness: Harness) -> None:
    db = harness.backend
    for key in ["/a/2", "/b/1", "/a/10", "/ab/1", "/a/1", "/a"]:
        await db.put(Item(key, key.encode()))
    assert [i.key for i in await db.get_range("/a/")] == ["/a/1", "/a/10", "/a/2"]
    assert [i.key for i in await db.get_range("/a")] == ["/a", "/a/1", "/a/10", "/a/2", "/ab/1"]
    assert [i.key for i in await db.get_range("/a/", limit=2)] == ["/a/1", "/a/10"]
    assert [i.value for i in await db.get_range("/b/")] == [b"/b/1"]
    assert await db.get_range("/c/") == []
    everything = await db.get_range("/")
    assert len(everything) == 6
    assert everything == [await db.get(i.key) for i in everything]


async def test_delete_range_deletes_only_under_the_prefix(harness: Harness) -> None:
    db = harness.backend
    for key in ["/nodes/a", "/nodes/b", "/nodes/c", "/nodesx", "/users/a"]:
        await db.put(Item(key, b"v"))
    assert await db.delete_range("/nodes/") == 3
    assert await db.get_range("/nodes/") == []
    assert [i.key for i in await db.get_range("/")] == ["/nodesx", "/users/a"]
    assert await db.delete_range("/nodes/") == 0


async def test_revisions_only_grow(harness: Harness) -> None:
    db = harness.backend
    revisions = []
    for i in range(5):
        revisions.append((await db.put(Item(f"/r/{i % 2}", b"v"))).revision)
    revisions.append((await db.create(Item("/r/new", b"v"))).revision)
    revisions.append((await db.update(Item("/r/new", b"w"))).revision)
    revisions.append(
        (await db.compare_and_swap(Item("/r/new", b"w"), Item("/r/new", b"x"))).revision
    )
    revisions.append((await db.keep_alive("/r/new", harness.clock() + 100)).revision)
    assert revisions == sorted(revisions)
    assert len(set(revisions)) == len(revisions)


async def test_bad_keys_are_refused_before_reaching_the_store(harness: Harness) -> None:
    db = harness.backend
    with pytest.raises(ValueError, match="starts with '/'"):
        await db.get("users/alice")
    with pytest.raises(TypeError):
        await db.get(b"/users/alice")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NUL"):
        Item("/a\x00b", b"v")
    with pytest.raises(TypeError):
        Item("/a", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one prefix"):
        async with db.watch([]):
            pass
    with pytest.raises(TypeError, match="list of prefixes"):
        async with db.watch("/users/"):
            pass


# --- expiry -----------------------------------------------------------------------


async def test_items_expire_on_the_clock(harness: Harness) -> None:
    db, clock = harness.backend, harness.clock
    await db.put(Item("/t/short", b"s", expires=clock() + 10))
    await db.put(Item("/t/long", b"l", expires=clock() + 1000))
    await db.put(Item("/t/never", b"n"))
    assert (await db.get("/t/short")).expires == clock() + 10
    clock.advance(10)
    with pytest.raises(NotFound):
        await db.get("/t/short")
    assert [i.key for i in await db.get_range("/t/")] == ["/t/long", "/t/never"]
    # An expired item is absent for every operation.
    with pytest.raises(NotFound):
        await db.delete("/t/short")
    with pytest.raises(NotFound):
        await db.update(Item("/t/short", b"x"))
    with pytest.raises(CompareFailed):
        await db.compare_and_swap(Item("/t/short", b"s"), Item("/t/short", b"x"))
    recreated = await db.create(Item("/t/short", b"again"))
    assert (await db.get("/t/short")) == recreated


async def test_keep_alive_extends_the_expiry(harness: Harness) -> None:
    db, clock = harness.backend, harness.clock
    await db.put(Item("/nodes/n1", b"heartbeat", expires=clock() + 10))
    clock.advance(5)
    kept = await db.keep_alive("/nodes/n1", clock() + 10)
    assert kept.expires == clock() + 10
    assert kept.value == b"heartbeat"
    clock.advance(6)  # past the first expiry, before the second
    assert (await db.get("/nodes/n1")) == kept
    clock.advance(4)
    with pytest.raises(NotFound):
        await db.get("/nodes/n1")
    with pytest.raises(NotFound):
        await db.keep_alive("/nodes/n1", clock() + 10)


async def test_keep_alive_can_make_an_item_permanent(harness: Harness) -> None:
    db, clock = harness.backend, harness.clock
    await db.put(Item("/k", b"v", expires=clock() + 10))
    await db.keep_alive("/k", None)
    clock.advance(100)
    assert (await db.get("/k")).expires is None


# --- races: what single-use join tokens rely on -------------------------------------


async def test_concurrent_compare_and_swap_increments_count_exactly(harness: Harness) -> None:
    db = harness.backend
    await db.put(Item("/counter", b"0"))
    tasks, increments = 8, 5
    conflicts = 0

    async def increment() -> None:
        nonlocal conflicts
        for _ in range(increments):
            while True:
                current = await db.get("/counter")
                new = str(int(current.value) + 1).encode()
                try:
                    await db.compare_and_swap(current, Item("/counter", new))
                    break
                except CompareFailed:
                    conflicts += 1

    with trio.fail_after(PATIENCE * 3):
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(increment)
    assert (await db.get("/counter")).value == str(tasks * increments).encode()


async def test_concurrent_creates_of_one_key_have_exactly_one_winner(harness: Harness) -> None:
    db = harness.backend
    winners: list[int] = []
    losers: list[int] = []

    async def create(i: int) -> None:
        try:
            await db.create(Item("/tokens/join", str(i).encode()))
            winners.append(i)
        except AlreadyExists:
            losers.append(i)

    with trio.fail_after(PATIENCE):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(create, i)
    assert len(winners) == 1
    assert len(losers) == 19
    assert (await db.get("/tokens/join")).value == str(winners[0]).encode()


async def test_concurrent_deletes_of_one_key_have_exactly_one_winner(harness: Harness) -> None:
    # Consuming a single-use token is "delete it; NotFound means someone else did".
    db = harness.backend
    await db.put(Item("/tokens/once", b"t"))
    outcomes: list[str] = []

    async def consume() -> None:
        try:
            await db.delete("/tokens/once")
            outcomes.append("won")
        except NotFound:
            outcomes.append("lost")

    with trio.fail_after(PATIENCE):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(consume)
    assert sorted(outcomes) == ["lost"] * 9 + ["won"]


# --- watches ------------------------------------------------------------------------


async def test_watch_delivers_puts_and_deletes_in_order_for_its_prefix_only(
    harness: Harness,
) -> None:
    db = harness.backend
    async with db.watch(["/nodes/"]) as events:
        a = await db.put(Item("/nodes/a", b"1"))
        await db.put(Item("/users/x", b"ignored"))
        await db.put(Item("/nodesx", b"ignored"))
        b = await db.put(Item("/nodes/b", b"2"))
        await db.delete("/nodes/a")
        await db.put(Item("/nodes/b", b"3"))
        first = await receive(events)
        assert first == Event(EventType.PUT, a)
        assert await receive(events) == Event(EventType.PUT, b)
        deleted = await receive(events)
        assert deleted.type is EventType.DELETE
        assert deleted.item.key == "/nodes/a"
        assert deleted.item.revision > b.revision
        last = await receive(events)
        assert (last.type, last.item.value) == (EventType.PUT, b"3")
        assert last.item.revision > deleted.item.revision


async def test_watch_of_several_prefixes_merges_them_in_revision_order(harness: Harness) -> None:
    db = harness.backend
    async with db.watch(["/users/", "/roles/"]) as events:
        for key in ["/users/a", "/nodes/n", "/roles/r", "/users/b", "/tokens/t"]:
            await db.put(Item(key, b"v"))
        got = [await receive(events) for _ in range(3)]
    assert [e.item.key for e in got] == ["/users/a", "/roles/r", "/users/b"]
    assert [e.item.revision for e in got] == sorted(e.item.revision for e in got)


async def test_watch_sees_only_changes_made_after_it_opened(harness: Harness) -> None:
    db = harness.backend
    await db.put(Item("/w/before", b"old"))
    async with db.watch(["/w/"]) as events:
        await db.put(Item("/w/after", b"new"))
        event = await receive(events)
    assert event.item.key == "/w/after"


async def test_two_watchers_each_get_every_event(harness: Harness) -> None:
    db = harness.backend
    async with db.watch(["/w/"]) as one, db.watch(["/"]) as two:
        await db.put(Item("/w/1", b"v"))
        await db.put(Item("/w/2", b"v"))
        assert await receive_n(one, 2) == [("put", "/w/1"), ("put", "/w/2")]
        assert await receive_n(two, 2) == [("put", "/w/1"), ("put", "/w/2")]


async def test_delete_range_and_keep_alive_are_seen_by_watchers(harness: Harness) -> None:
    db, clock = harness.backend, harness.clock
    await db.put(Item("/n/a", b"v"))
    await db.put(Item("/n/b", b"v", expires=clock() + 100))
    async with db.watch(["/n/"]) as events:
        kept = await db.keep_alive("/n/b", clock() + 200)
        event = await receive(events)
        assert event == Event(EventType.PUT, kept)
        await db.delete_range("/n/")
        assert await receive_n(events, 2) == [("delete", "/n/a"), ("delete", "/n/b")]


async def test_expired_items_produce_delete_events(harness: Harness) -> None:
    db, clock = harness.backend, harness.clock
    async with db.watch(["/sessions/"]) as events:
        put = await db.put(Item("/sessions/s1", b"v", expires=clock() + 1))
        await db.put(Item("/sessions/s2", b"v", expires=clock() + 1000))
        assert (await receive(events)).item == put
        assert (await receive(events)).item.key == "/sessions/s2"
        clock.advance(1)
        # Memory and SQLite sweep on the fake clock; etcd's lease runs out in real time.
        deleted = await receive(events)
    assert (deleted.type, deleted.item.key) == (EventType.DELETE, "/sessions/s1")
    assert deleted.item.revision > put.revision
    assert [i.key for i in await db.get_range("/sessions/")] == ["/sessions/s2"]


async def test_a_slow_watcher_is_cut_off_instead_of_buffering_forever(harness: Harness) -> None:
    db = harness.backend
    async with db.watch(["/flood/"], max_pending=4) as slow, db.watch(["/flood/"]) as fast:
        for i in range(10):
            await db.put(Item(f"/flood/{i}", b"v"))
        # Once the fast watcher has all ten, all ten were offered to the slow one too.
        assert len(await receive_n(fast, 10)) == 10
        with pytest.raises(trio.BrokenResourceError, match="resync"):
            await receive(slow)
        with pytest.raises(trio.BrokenResourceError):
            await receive(slow)
    # The fix is a new watch (and a re-read), which works as before.
    async with db.watch(["/flood/"], max_pending=4) as again:
        await db.put(Item("/flood/again", b"v"))
        assert (await receive(again)).item.key == "/flood/again"


async def test_closing_the_backend_ends_its_watches_and_refuses_calls(harness: Harness) -> None:
    db = harness.backend
    async with db.watch(["/c/"]) as events:
        await db.put(Item("/c/1", b"v"))
        assert (await receive(events)).item.key == "/c/1"
        await db.aclose()
        with pytest.raises(trio.EndOfChannel):
            await receive(events)
    with pytest.raises(trio.ClosedResourceError):
        await db.get("/c/1")
    with pytest.raises(trio.ClosedResourceError):
        await db.put(Item("/c/2", b"v"))
