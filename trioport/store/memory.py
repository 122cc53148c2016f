"""An in-process :class:`~trioport.store.backend.Backend` for tests.

Everything lives in a dict and every operation runs without an ``await`` between
reading and writing, so trio's cooperative scheduling makes each one atomic. A
background task sweeps expired items every ``sweep_interval`` seconds of trio
time (comparing ``expires`` against the backend's wall ``clock``, which tests
replace with a fake one) and publishes their DELETE events. Nothing survives
:meth:`MemoryBackend.aclose`.
"""

from __future__ import annotations

import bisect
import functools
import hmac
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from trioport.errors import AlreadyExists, CompareFailed, NotFound
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
    is_live,
)

__all__ = ["MemoryBackend", "open_memory_backend"]


class MemoryBackend:
    """A dict-backed store; open it with :func:`open_memory_backend`."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock
        self._items: dict[str, Item] = {}
        self._keys: list[str] = []  # sorted, for ranges
        self._revision = 0
        self._fanout = Fanout()
        self._background: Background | None = None
        self._closed = False

    # --- reads ---------------------------------------------------------------

    async def get(self, key: str) -> Item:
        """See :meth:`Backend.get`."""
        check_key(key)
        await self._checkpoint()
        item = self._live(key)
        if item is None:
            raise NotFound(f"key {key!r} not found")
        return item

    async def get_range(self, prefix: str, *, limit: int | None = None) -> list[Item]:
        """See :meth:`Backend.get_range`."""
        check_prefix(prefix)
        check_limit(limit)
        await self._checkpoint()
        now = self.clock()
        found = []
        for key in self._keys_under(prefix):
            item = self._items[key]
            if is_live(item, now):
                found.append(item)
                if limit is not None and len(found) >= limit:
                    break
        return found

    # --- writes --------------------------------------------------------------

    async def put(self, item: Item) -> Item:
        """See :meth:`Backend.put`."""
        await self._checkpoint()
        return self._write(item)

    async def create(self, item: Item) -> Item:
        """See :meth:`Backend.create`."""
        await self._checkpoint()
        if self._live(item.key) is not None:
            raise AlreadyExists(f"key {item.key!r} already exists")
        return self._write(item)

    async def update(self, item: Item) -> Item:
        """See :meth:`Backend.update`."""
        await self._checkpoint()
        if self._live(item.key) is None:
            raise NotFound(f"key {item.key!r} not found")
        return self._write(item)

    async def compare_and_swap(self, expected: Item, replace_with: Item) -> Item:
        """See :meth:`Backend.compare_and_swap`."""
        if expected.key != replace_with.key:
            raise ValueError(f"compare_and_swap of {expected.key!r} with {replace_with.key!r}")
        await self._checkpoint()
        current = self._live(expected.key)
        if current is None:
            raise CompareFailed(f"key {expected.key!r} not found")
        if not hmac.compare_digest(current.value, expected.value):
            raise CompareFailed(f"key {expected.key!r} has a different value")
        return self._write(replace_with)

    async def delete(self, key: str) -> None:
        """See :meth:`Backend.delete`."""
        check_key(key)
        await self._checkpoint()
        if self._live(key) is None:
            raise NotFound(f"key {key!r} not found")
        self._remove([key])

    async def delete_range(self, prefix: str) -> int:
        """See :meth:`Backend.delete_range`."""
        check_prefix(prefix)
        await self._checkpoint()
        now = self.clock()
        keys = list(self._keys_under(prefix))
        live = sum(1 for key in keys if is_live(self._items[key], now))
        self._remove(keys)
        return live

    async def keep_alive(self, key: str, expires: float | None) -> Item:
        """See :meth:`Backend.keep_alive`."""
        check_key(key)
        await self._checkpoint()
        current = self._live(key)
        if current is None:
            raise NotFound(f"key {key!r} not found")
        return self._write(attrs.evolve(current, expires=expires))

    # --- watches and lifetime ------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, prefixes: Sequence[str], *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> AsyncIterator[trio.abc.ReceiveChannel[Event]]:
        """See :meth:`Backend.watch`."""
        checked = check_prefixes(prefixes)
        await self._checkpoint()
        channel = self._fanout.add(checked, max_pending, self._revision)
        try:
            yield channel
        finally:
            self._fanout.remove(channel)

    def sweep(self) -> int:
        """Remove expired items now, publishing their DELETE events; return how many."""
        now = self.clock()
        expired = [key for key, item in self._items.items() if not is_live(item, now)]
        self._remove(sorted(expired))
        return len(expired)

    async def aclose(self) -> None:
        """See :meth:`Backend.aclose`."""
        self._closed = True
        self._fanout.finish_all()
        if self._background is not None:
            await self._background.aclose()
        await trio.lowlevel.checkpoint()

    # --- helpers -------------------------------------------------------------

    async def _checkpoint(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("the backend is closed")

    def _live(self, key: str) -> Item | None:
        item = self._items.get(key)
        if item is None or not is_live(item, self.clock()):
            return None
        return item

    def _keys_under(self, prefix: str) -> list[str]:
        start = bisect.bisect_left(self._keys, prefix)
        end = start
        while end < len(self._keys) and self._keys[end].startswith(prefix):
            end += 1
        return self._keys[start:end]

    def _write(self, item: Item) -> Item:
        self._revision += 1
        stored = attrs.evolve(item, revision=self._revision)
        if item.key not in self._items:
            bisect.insort(self._keys, item.key)
        self._items[item.key] = stored
        self._fanout.publish([Event(EventType.PUT, stored)])
        return stored

    def _remove(self, keys: list[str]) -> None:
        events = []
        for key in keys:
            del self._items[key]
            self._keys.pop(bisect.bisect_left(self._keys, key))
            self._revision += 1
            events.append(Event(EventType.DELETE, Item(key, revision=self._revision)))
        self._fanout.publish(events)


@asynccontextmanager
async def open_memory_backend(
    *, clock: Clock = time.time, sweep_interval: float = 1.0
) -> AsyncIterator[MemoryBackend]:
    """Open an empty in-memory backend; it is closed when the block exits.

    Args:
        clock: the wall clock that decides expiry.
        sweep_interval: trio seconds between sweeps of expired items.
    """
    backend = MemoryBackend(clock=clock)
    try:
        async with background_tasks() as background:
            backend._background = background
            background.start_soon(functools.partial(_sweeper, backend, sweep_interval))
            yield backend
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()


async def _sweeper(backend: MemoryBackend, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        backend.sweep()
