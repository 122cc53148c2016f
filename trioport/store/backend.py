"""The storage contract every backend keeps: items, events, the Backend protocol.

All state of a trioport cluster (users, roles, tokens, nodes, CAs, sessions) lives
in one key-value store behind the :class:`Backend` protocol, shaped after
Teleport's ``lib/backend/backend.go``. Three implementations keep it and are run
through one compliance suite (``tests/store/test_compliance.py``):
:mod:`trioport.store.memory` (tests), :mod:`trioport.store.sqlite` (the embedded
default) and :mod:`trioport.store.etcd` (several auth servers sharing a cluster).

The semantics, common to all backends:

* **Keys** are ``str`` paths that start with ``/`` (``"/users/alice"``), at most
  :data:`MAX_KEY_BYTES` bytes of UTF-8. Ranges, ordering and watches work on plain
  string prefixes: ``"/users/"`` matches ``"/users/alice"`` and nothing under
  ``"/usersx"``; ``"/users"`` matches both, so end a prefix with ``/``. Listings are
  sorted by key (UTF-8 byte order, which is code point order).
* **Values** are ``bytes`` of at most :data:`MAX_VALUE_BYTES`.
* **Revisions.** Every write gets a revision from one counter per store, strictly
  greater than the revision of every earlier write. Reads return the revision of
  the write that produced the item. A :meth:`Backend.delete_range` may give all
  its deletions one revision (etcd does) or one each (SQLite, memory).
* **Expiry.** ``Item.expires`` is an absolute wall-clock time in seconds (the
  backend's ``clock``), or ``None`` for "never". An item whose ``expires`` is at or
  before ``clock()`` reads as absent everywhere at once (get, range, create,
  compare-and-swap). Some time later the backend removes it and watchers see a
  DELETE event for it, unless it was overwritten first. :meth:`Backend.keep_alive`
  moves the expiry of a live item.
* **Watches.** ``async with backend.watch(["/nodes/"]) as events:`` yields a
  bounded :class:`trio.abc.ReceiveChannel` of :class:`Event`. Every change with a
  revision greater than the store's revision at the moment the context was entered,
  to a key under one of the prefixes, is delivered once, in revision order. PUT
  events carry the new item; DELETE events carry the key and the revision of the
  deletion (``value`` is ``b""``, ``expires`` is ``None``).
* **Slow watchers.** A watch buffers at most ``max_pending`` undelivered events
  (default :data:`DEFAULT_MAX_PENDING`). One more and the watch is *broken*: its
  buffer is dropped at once, and the next ``receive()`` raises
  :class:`trio.BrokenResourceError`. The watcher must then open a new watch and
  re-read what it caches (get_range), the "resync" of Teleport's OpInit. The same
  happens when a backend loses events it cannot replay (etcd compacted past the
  point a watch must resume from). When the backend closes, open watches end:
  ``receive()`` raises :class:`trio.EndOfChannel` once the buffer is drained.
* **Errors** come from :mod:`trioport.errors`: :class:`~trioport.errors.NotFound`,
  :class:`~trioport.errors.AlreadyExists`, :class:`~trioport.errors.CompareFailed`,
  :class:`~trioport.errors.BackendUnavailable` (cannot reach or lock the store;
  retrying may help) and :class:`~trioport.errors.StoreError` for the rest. A bad
  key, value or argument is a bug in the caller and raises :class:`ValueError` or
  :class:`TypeError`. Calls on a closed backend raise
  :class:`trio.ClosedResourceError`.
* **Cancellation.** If a write is cancelled, it may or may not have happened.

A backend is opened with an async context manager that owns its background tasks
(expiry sweeper, change poller, watch stream): ``open_memory_backend``,
``open_sqlite_backend``, ``open_etcd_backend``, or ``trioport.store.open_backend``
from a ``storage:`` config section.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

__all__ = [
    "DEFAULT_MAX_PENDING",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "Backend",
    "Background",
    "Clock",
    "Event",
    "EventType",
    "Fanout",
    "Item",
    "WatchChannel",
    "background_tasks",
    "check_key",
    "check_limit",
    "check_prefix",
    "check_prefixes",
    "is_live",
    "range_end",
]

#: A wall clock: returns seconds since the epoch, like :func:`time.time`.
Clock = Callable[[], float]

#: Longest key, in UTF-8 bytes.
MAX_KEY_BYTES = 4096
#: Largest value. etcd refuses requests over 1.5 MiB by default; 1 MiB leaves room.
MAX_VALUE_BYTES = 1024 * 1024
#: Events a watch buffers before it is broken (Teleport's fanout buffer is 1024).
DEFAULT_MAX_PENDING = 1024


def check_key(key: object) -> str:
    """Return ``key`` if it is a valid key, else raise.

    Raises:
        TypeError: ``key`` is not a ``str``.
        ValueError: it does not start with ``/``, holds a NUL or is too long.
    """
    if not isinstance(key, str):
        raise TypeError(f"a key is a str, not {type(key).__name__}")
    if not key.startswith("/"):
        raise ValueError(f"a key starts with '/': {key!r}")
    _check_text(key, "key")
    return key


def check_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a valid range or watch prefix (``"/"`` is everything)."""
    if not isinstance(prefix, str):
        raise TypeError(f"a prefix is a str, not {type(prefix).__name__}")
    if not prefix.startswith("/"):
        raise ValueError(f"a prefix starts with '/': {prefix!r}")
    _check_text(prefix, "prefix")
    return prefix


def check_prefixes(prefixes: Sequence[str]) -> tuple[str, ...]:
    """Validate a watch's prefix list: a non-empty sequence of prefixes (not one str)."""
    if isinstance(prefixes, str | bytes):
        raise TypeError("watch() takes a list of prefixes, not a single string")
    checked = tuple(check_prefix(p) for p in prefixes)
    if not checked:
        raise ValueError("watch() needs at least one prefix ('/' watches everything)")
    return checked


def check_limit(limit: object) -> int | None:
    """Validate a get_range ``limit``: a positive int, or ``None`` for no limit."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit is a positive int or None, got {limit!r}")
    return limit


def _check_text(text: str, what: str) -> None:
    if "\x00" in text:
        raise ValueError(f"a {what} may not contain NUL: {text!r}")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"a {what} must be valid Unicode: {text!r}") from None
    if size > MAX_KEY_BYTES:
        raise ValueError(f"a {what} is at most {MAX_KEY_BYTES} bytes, got {size}")


def _check_value(_item: object, _attr: object, value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"a value is bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"a value is at most {MAX_VALUE_BYTES} bytes, got {len(value)}")


def _check_expires(_item: object, _attr: object, expires: object) -> None:
    if expires is None:
        return
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        raise TypeError(f"expires is a float (epoch seconds) or None, not {expires!r}")
    if not math.isfinite(expires):
        raise ValueError(f"expires must be finite, got {expires!r}")


@attrs.frozen
class Item:
    """One key and its value.

    Attributes:
        key: a path such as ``"/users/alice"`` (see :func:`check_key`).
        value: the payload; backends never look inside it.
        expires: absolute wall-clock expiry in epoch seconds, or ``None``.
        revision: set by the backend on every write; ignored when writing.
    """

    key: str = attrs.field(validator=lambda _i, _a, k: check_key(k))
    value: bytes = attrs.field(default=b"", validator=_check_value)
    expires: float | None = attrs.field(default=None, validator=_check_expires)
    revision: int = 0


class EventType(enum.Enum):
    """What happened to a key."""

    PUT = "put"
    DELETE = "delete"


@attrs.frozen
class Event:
    """A change seen by a watch: a PUT of ``item``, or a DELETE of ``item.key``."""

    type: EventType
    item: Item


def is_live(item: Item, now: float) -> bool:
    """True if ``item`` has not expired at wall time ``now``."""
    return item.expires is None or item.expires > now


def range_end(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string that starts with ``prefix``.

    ``[prefix, range_end(prefix))`` is the half-open range of keys under ``prefix``
    (etcd's ``range_end`` convention). Trailing 0xff bytes cannot be incremented and
    are dropped; an all-0xff or empty prefix gives ``b"\\x00"``, which etcd reads
    as "to the end of the keyspace" (callers that need a real bound handle it).
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Backend(Protocol):
    """The key-value store every trioport service keeps its state in.

    The module docstring of :mod:`trioport.store.backend` states the semantics
    (keys, revisions, expiry, watches, errors); every method keeps them.
    """

    #: The wall clock that decides expiry (``time.time`` outside tests).
    clock: Clock

    async def get(self, key: str) -> Item:
        """Return the live item at ``key``; raise NotFound if absent or expired."""
        ...

    async def get_range(self, prefix: str, *, limit: int | None = None) -> list[Item]:
        """Return the live items whose keys start with ``prefix``, sorted by key.

        ``limit`` caps how many are returned (the first ones in key order).
        """
        ...

    async def put(self, item: Item) -> Item:
        """Write ``item`` whether or not the key exists; return it with its revision."""
        ...

    async def create(self, item: Item) -> Item:
        """Write ``item`` only if no live item has its key, else raise AlreadyExists.

        Of many concurrent creates of one key exactly one succeeds: this is what
        makes a join token single-use.
        """
        ...

    async def update(self, item: Item) -> Item:
        """Overwrite a live item; raise NotFound if there is none."""
        ...

    async def compare_and_swap(self, expected: Item, replace_with: Item) -> Item:
        """Write ``replace_with`` only if the live value at its key equals ``expected.value``.

        Raises CompareFailed if the value differs or the key is absent or expired,
        and ValueError if the two items have different keys. Of concurrent swaps
        from the same expected value exactly one succeeds.
        """
        ...

    async def delete(self, key: str) -> None:
        """Delete the live item at ``key``; raise NotFound if there is none."""
        ...

    async def delete_range(self, prefix: str) -> int:
        """Delete every item whose key starts with ``prefix``; return how many were live."""
        ...

    async def keep_alive(self, key: str, expires: float | None) -> Item:
        """Set a live item's expiry (``None``: never) and return it; NotFound if absent.

        It is a write: the item gets a new revision and watchers see a PUT event.
        """
        ...

    def watch(
        self, prefixes: Sequence[str], *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[Event]]:
        """Watch keys under ``prefixes``; see "Watches" in the module docstring."""
        ...

    async def aclose(self) -> None:
        """Close the backend: end open watches, release files and connections."""
        ...


class WatchChannel(trio.abc.ReceiveChannel[Event]):
    """The bounded receive side of one watch, fed by a :class:`Fanout`.

    Events are offered synchronously by the producer and never block it: when
    ``max_pending`` events are already buffered the channel breaks instead
    (see "Slow watchers" in the module docstring).
    """

    def __init__(self, prefixes: Sequence[str], max_pending: int, after_revision: int) -> None:
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending is a positive int, got {max_pending!r}")
        self.prefixes = tuple(prefixes)
        self.max_pending = max_pending
        self.after_revision = after_revision
        self._queue: collections.deque[Event] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._broken: str | None = None
        self._finished = False
        self._closed = False

    def matches(self, event: Event) -> bool:
        """True if ``event`` is for this watch (prefix and revision)."""
        return event.item.revision > self.after_revision and event.item.key.startswith(
            self.prefixes
        )

    def offer(self, event: Event) -> None:
        """Queue ``event`` if it matches; break the watch if the buffer is full."""
        if self._broken is not None or self._finished or self._closed:
            return
        if not self.matches(event):
            return
        if len(self._queue) >= self.max_pending:
            self.break_(
                f"the watcher fell more than {self.max_pending} events behind; "
                "open a new watch and re-read (resync)"
            )
            return
        self._queue.append(event)
        self._lot.unpark_all()

    def break_(self, reason: str) -> None:
        """Drop the buffer; the next receive raises BrokenResourceError(reason)."""
        if self._broken is None and not self._closed:
            self._broken = reason
            self._queue.clear()
            self._lot.unpark_all()

    def finish(self) -> None:
        """The producer is done: receive drains the buffer, then raises EndOfChannel."""
        self._finished = True
        self._lot.unpark_all()

    @property
    def pending(self) -> int:
        """How many events are buffered."""
        return len(self._queue)

    async def receive(self) -> Event:
        """Return the next event.

        Raises:
            trio.BrokenResourceError: the watch fell behind or lost events; resync.
            trio.EndOfChannel: the backend closed and every event was delivered.
            trio.ClosedResourceError: this channel was closed by its owner.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not (self._queue or self._broken or self._finished or self._closed):
            await self._lot.park()
        if self._closed:
            raise trio.ClosedResourceError("this watch was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)
        if self._queue:
            event = self._queue.popleft()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return event
        raise trio.EndOfChannel

    async def aclose(self) -> None:
        """Stop receiving; the buffer is dropped."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        self._closed = True
        self._queue.clear()
        self._lot.unpark_all()


class Fanout:
    """Hands each published event to every open watch that matches it."""

    def __init__(self) -> None:
        self._watchers: set[WatchChannel] = set()

    def __len__(self) -> int:
        return len(self._watchers)

    def publish(self, events: Iterable[Event]) -> None:
        """Offer ``events`` (in revision order) to every watcher; never blocks."""
        for event in events:
            for watcher in tuple(self._watchers):
                watcher.offer(event)

    def break_all(self, reason: str) -> None:
        """Break every open watch (events were lost; watchers must resync)."""
        for watcher in self._watchers:
            watcher.break_(reason)

    def finish_all(self) -> None:
        """End every open watch cleanly (the backend is closing)."""
        for watcher in self._watchers:
            watcher.finish()

    def add(self, prefixes: Sequence[str], max_pending: int, after_revision: int) -> WatchChannel:
        """Register a watch for changes after ``after_revision``.

        The caller must read ``after_revision`` and call this with no change
        published in between (no checkpoint, or under the publisher's lock), and
        must :meth:`remove` the channel when the watch ends.
        """
        channel = WatchChannel(prefixes, max_pending, after_revision)
        self._watchers.add(channel)
        return channel

    def remove(self, channel: WatchChannel) -> None:
        """Unregister and close a watch."""
        self._watchers.discard(channel)
        channel.close()


class Background:
    """A backend's own tasks (sweeper, poller, watch stream), stoppable from ``aclose``.

    The tasks run in :attr:`nursery`, under a cancel scope of their own, so that
    :meth:`aclose` stops them without cancelling the code inside the backend's
    ``async with`` block.
    """

    def __init__(self) -> None:
        self.nursery: trio.Nursery | None = None
        self._cancel_scope = trio.CancelScope()
        self._done = trio.Event()

    async def _host(self, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self.nursery = None
            self._done.set()

    def start_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` in the background; a no-op once stopped."""
        if self.nursery is not None:
            self.nursery.start_soon(fn)

    async def aclose(self) -> None:
        """Cancel the tasks and wait until they are gone."""
        self._cancel_scope.cancel()
        if self.nursery is not None or not self._done.is_set():
            with trio.CancelScope(shield=True):
                await self._done.wait()


@asynccontextmanager
async def background_tasks() -> AsyncIterator[Background]:
    """Host a :class:`Background` and let the body's exceptions out unwrapped.

    The ``open_*_backend`` context managers yield inside this. An exception from
    the body (a ``NotFound`` the caller did not catch) leaves the ``async with``
    as itself rather than inside an ``ExceptionGroup``; the background tasks are
    cancelled first. A crash of a background task still surfaces as a group.
    """
    background = Background()
    body_exc: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(background._host)
        try:
            yield background
        except BaseException as exc:  # re-raised below, once the nursery is closed
            body_exc = exc
        finally:
            nursery.cancel_scope.cancel()
    if body_exc is not None:
        raise body_exc
