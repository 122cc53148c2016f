"""The :class:`~trioport.store.backend.Backend` for several auth servers: etcd v3.

It speaks etcd's v3 API through etcd's JSON gateway (grpc-gateway, served under
``/v3/`` by etcd 3.4 and later) with :mod:`httpx`, which runs on trio through
anyio. Keys and values travel base64-encoded; 64-bit integers travel as strings.
The calls used: ``/v3/kv/range``, ``/v3/kv/put``, ``/v3/kv/txn``,
``/v3/kv/deleterange``, ``/v3/lease/grant``, ``/v3/lease/revoke`` and the
streaming ``/v3/watch``.

Mapping of the contract onto etcd:

* **Keys** live under the configured ``prefix``: ``"/users/alice"`` with prefix
  ``"/trioport"`` is etcd key ``/trioport/users/alice``. Several clusters can share
  one etcd with different prefixes.
* **Revisions** are etcd's: an item's revision is its ``mod_revision``, a deletion's
  is the revision of the delete. A ``delete_range`` is one etcd revision.
* **Values** are stored in a small envelope: one version byte, then (for items
  that expire) the absolute expiry as a big-endian IEEE double, then the value.
  The envelope keeps ``Item.expires`` exact and lets reads hide an expired item
  at once, independent of when etcd gets round to revoking its lease.
* **Expiry** uses leases: each write of an expiring item grants a lease with TTL
  ``ceil(expires - clock())`` (etcd rounds TTLs up to its minimum, about 2 s) and
  attaches the key to it. When the lease runs out etcd deletes the key and
  watchers see the DELETE. :meth:`EtcdBackend.keep_alive` rewrites the item on a
  fresh lease, because ``/v3/lease/keepalive`` can only renew a lease for its
  original TTL, not move the expiry to an arbitrary time.
* **create, update, compare_and_swap, delete and keep_alive** are transactions
  (``/v3/kv/txn``) guarded by the key's ``mod_revision`` as read just before (or
  by ``mod_revision == 0``, "absent", for create). A guard that fails means
  someone else wrote first: the call re-reads and decides again, so exactly one
  of many racing creates or swaps wins.
* **Watches** share one etcd watch stream over the whole prefix, started with the
  first watch and fanned out to every watch of this backend. When the stream
  breaks (etcd restarts, a connection drops) it reconnects, trying each peer in
  turn with backoff, and resumes from the revision after the last event it
  delivered, so no event is lost. If etcd compacted that revision away the
  events are gone: every open watch is broken and must resync.
* **Failover.** ``peers`` are tried in order; a peer that refuses the connection
  is skipped for the next one, and later calls start from the peer that answered.
  Reads, puts and lease calls are repeated on the next peer when they fail after
  they were sent (a member died mid-request, or etcd had no leader during an
  election), for a few bounded rounds; a transaction or a delete that failed
  after it was sent raises :class:`~trioport.errors.BackendUnavailable` without
  being repeated, because it may have taken effect. So with three members one
  can die at any moment and callers see at most a slower request (see
  ``docs/ha.md``).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import math
import ssl
import struct
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
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
    is_live,
    range_end,
)

__all__ = ["DEFAULT_PREFIX", "MAX_IN_FLIGHT", "EtcdBackend", "open_etcd_backend", "tls_context"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/trioport"

_PLAIN = 0  # envelope: version byte 0, then the value
_EXPIRING = 1  # envelope: version byte 1, 8-byte big-endian expiry, then the value
_EXPIRY = struct.Struct(">d")

# grpc status codes etcd reports through the gateway (google.golang.org/grpc/codes).
_GRPC_NOT_FOUND = 5
_GRPC_UNAVAILABLE = 14
_GRPC_DEADLINE_EXCEEDED = 4

_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 2.0
#: Calls that may be sent again after a failure: repeating them changes nothing a
#: caller can tell (a put writes the same value again; a lease no key uses expires).
_IDEMPOTENT = frozenset({"/v3/kv/range", "/v3/kv/put", "/v3/lease/grant", "/v3/lease/revoke"})
#: Rounds over all peers a call makes before it gives up.
_RETRY_ROUNDS = 3
#: What etcd says when it refused a request because it has no leader (nothing was applied).
_NO_LEADER = "no leader"
#: Requests in flight to etcd at once; the rest wait their turn in order. Without
#: a bound, a burst (thousands of heartbeats) piles up in httpx's connection pool,
#: whose bookkeeping slows down with every waiter until calls time out there
#: (``PoolTimeout``) instead of being served: throughput collapsed to a few calls
#: a second. Well below the pool's 100 connections, so the pool never waits.
MAX_IN_FLIGHT = 32


class _LeaseNotFound(StoreError):
    """A put named a lease that expired before the put arrived; grant a new one."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def _pack(item: Item) -> bytes:
    if item.expires is None:
        return bytes([_PLAIN]) + item.value
    return bytes([_EXPIRING]) + _EXPIRY.pack(item.expires) + item.value


def _unpack(raw: bytes) -> tuple[bytes, float | None]:
    if raw[:1] == bytes([_PLAIN]):
        return raw[1:], None
    if raw[:1] == bytes([_EXPIRING]) and len(raw) >= 1 + _EXPIRY.size:
        return raw[1 + _EXPIRY.size :], _EXPIRY.unpack_from(raw, 1)[0]
    raise StoreError("an etcd value under the trioport prefix is not a trioport item")


def tls_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """An SSL context trusting ``ca_file`` (else the system CAs), with an optional client cert.

    Raises:
        OSError, ssl.SSLError: a file is missing or not PEM.
        ValueError: only one of ``cert_file`` and ``key_file`` was given.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("tls_cert_file and tls_key_file go together")
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


class EtcdBackend:
    """A store in an etcd cluster; open it with :func:`open_etcd_backend`."""

    def __init__(
        self,
        peers: Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock = time.time,
        ssl_context: ssl.SSLContext | None = None,
        request_timeout: float = 5.0,
    ) -> None:
        if isinstance(peers, str) or not peers:
            raise ValueError("peers is a non-empty list of URLs")
        for peer in peers:
            if not peer.startswith(("http://", "https://")):
                raise ValueError(f"an etcd peer is an http:// or https:// URL, got {peer!r}")
        if prefix and not prefix.startswith("/"):
            raise ValueError(f"the etcd prefix starts with '/': {prefix!r}")
        self.clock = clock
        self.peers = [peer.rstrip("/") for peer in peers]
        self.prefix = prefix.rstrip("/")
        self.request_timeout = request_timeout
        self._root = self.prefix.encode() + b"/"  # every key of ours starts with this
        self._client = httpx.AsyncClient(
            verify=ssl_context if ssl_context is not None else True, timeout=request_timeout
        )
        self._in_flight = trio.Semaphore(MAX_IN_FLIGHT)
        self._current = 0  # index of the peer to try first
        self._fanout = Fanout()
        self._background: Background | None = None
        self._start_lock = trio.Lock()  # one watch starts the stream
        self._registering = 0  # watches between reading their revision and registering
        self._held: list[Event] = []  # events received meanwhile
        self._stream_started = False
        self._closed = False

    # --- reads ---------------------------------------------------------------

    async def get(self, key: str) -> Item:
        """See :meth:`Backend.get`."""
        check_key(key)
        _mod, item = await self._read(key)
        if item is None:
            raise NotFound(f"key {key!r} not found")
        return item

    async def get_range(self, prefix: str, *, limit: int | None = None) -> list[Item]:
        """See :meth:`Backend.get_range`."""
        check_prefix(prefix)
        check_limit(limit)
        start = self._full(prefix)
        end = range_end(start)
        now = self.clock()
        found: list[Item] = []
        body: dict[str, Any] = {"key": _b64(start), "range_end": _b64(end)}
        while True:
            if limit is not None:
                body["limit"] = str(limit - len(found))
            reply = await self._call("/v3/kv/range", body)
            kvs = reply.get("kvs", [])
            for kv in kvs:
                item = self._item(kv)
                if is_live(item, now):
                    found.append(item)
            if limit is None or len(found) >= limit or not reply.get("more") or not kvs:
                return found[:limit]
            # Expired items filled the page: read on from the same snapshot.
            body["key"] = _b64(_unb64(kvs[-1]["key"]) + b"\x00")
            body["revision"] = reply["header"]["revision"]

    # --- writes --------------------------------------------------------------

    async def put(self, item: Item) -> Item:
        """See :meth:`Backend.put`."""
        while True:
            lease = await self._grant(item.expires)
            try:
                reply = await self._call("/v3/kv/put", self._put_body(item, lease))
            except _LeaseNotFound:
                continue
            return _with_revision(item, reply)

    async def create(self, item: Item) -> Item:
        """See :meth:`Backend.create`."""
        mod = 0  # first try: "the key is absent"
        while True:
            stored = await self._write_if(item, mod)
            if stored is not None:
                return stored
            mod, current = await self._read(item.key)
            if current is not None:
                raise AlreadyExists(f"key {item.key!r} already exists")
            # Absent again, or present but expired (mod is then its revision and the
            # next try replaces exactly that expired item).

    async def update(self, item: Item) -> Item:
        """See :meth:`Backend.update`."""
        while True:
            mod, current = await self._read(item.key)
            if current is None:
                raise NotFound(f"key {item.key!r} not found")
            stored = await self._write_if(item, mod)
            if stored is not None:
                return stored

    async def compare_and_swap(self, expected: Item, replace_with: Item) -> Item:
        """See :meth:`Backend.compare_and_swap`."""
        if expected.key != replace_with.key:
            raise ValueError(f"compare_and_swap of {expected.key!r} with {replace_with.key!r}")
        while True:
            mod, current = await self._read(expected.key)
            if current is None:
                raise CompareFailed(f"key {expected.key!r} not found")
            if not hmac.compare_digest(current.value, expected.value):
                raise CompareFailed(f"key {expected.key!r} has a different value")
            stored = await self._write_if(replace_with, mod)
            if stored is not None:
                return stored

    async def delete(self, key: str) -> None:
        """See :meth:`Backend.delete`."""
        check_key(key)
        full = _b64(self._full(key))
        while True:
            mod, current = await self._read(key)
            if current is None:
                raise NotFound(f"key {key!r} not found")
            reply = await self._call(
                "/v3/kv/txn",
                {
                    "compare": [_mod_equals(full, mod)],
                    "success": [{"request_delete_range": {"key": full}}],
                },
            )
            if reply.get("succeeded"):
                return

    async def delete_range(self, prefix: str) -> int:
        """See :meth:`Backend.delete_range`."""
        check_prefix(prefix)
        start = self._full(prefix)
        reply = await self._call(
            "/v3/kv/deleterange",
            {"key": _b64(start), "range_end": _b64(range_end(start)), "prev_kv": True},
        )
        now = self.clock()
        return sum(1 for kv in reply.get("prev_kvs", []) if is_live(self._item(kv), now))

    async def keep_alive(self, key: str, expires: float | None) -> Item:
        """See :meth:`Backend.keep_alive`."""
        check_key(key)
        Item(key, expires=expires)  # validates expires
        while True:
            mod, current = await self._read(key)
            if current is None:
                raise NotFound(f"key {key!r} not found")
            stored = await self._write_if(Item(key, current.value, expires), mod)
            if stored is not None:
                return stored

    # --- watches -------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, prefixes: Sequence[str], *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> AsyncIterator[trio.abc.ReceiveChannel[Event]]:
        """See :meth:`Backend.watch`."""
        checked = check_prefixes(prefixes)
        # While registering, the stream holds back what it receives (see _publish).
        self._registering += 1
        try:
            async with self._start_lock:
                revision = await self._revision()
                if not self._stream_started:
                    nursery = self._background.nursery if self._background else None
                    if nursery is None:
                        raise trio.ClosedResourceError("the backend is closed")
                    await nursery.start(self._watch_stream, revision + 1)
                    self._stream_started = True
            channel = self._fanout.add(checked, max_pending, revision)
        finally:
            self._registering -= 1
            if not self._registering and self._held:
                held, self._held = self._held, []
                self._fanout.publish(held)
        try:
            yield channel
        finally:
            self._fanout.remove(channel)

    async def _watch_stream(
        self, start_revision: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Feed the fanout from one etcd watch over the whole prefix, forever."""
        state = _StreamState(next_revision=start_revision)
        backoff = _BACKOFF_MIN
        while True:
            peer = self.peers[self._current]
            request = self._request(
                peer + "/v3/watch",
                {
                    "create_request": {
                        "key": _b64(self._root),
                        "range_end": _b64(range_end(self._root)),
                        "start_revision": str(state.next_revision),
                    }
                },
                timeout=httpx.Timeout(self.request_timeout, read=None),
            )
            try:
                response = await self._client.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        await response.aread()
                        raise StoreError(f"HTTP {response.status_code}: {response.text[:200]}")
                    # Nothing inside this loop raises or breaks: to stop, the response
                    # is closed and the iteration ends from within httpx, so none of
                    # httpx's nested async generators is left suspended (trio warns
                    # about those when they are garbage collected).
                    async for line in response.aiter_lines():
                        if state.stop is None and self._on_watch_line(line, state, task_status):
                            backoff = _BACKOFF_MIN
                        if state.stop is not None:
                            await response.aclose()
                finally:
                    await response.aclose()
            except (httpx.HTTPError, StoreError) as exc:
                state.stop = state.stop or repr(exc)
            if not state.started:
                raise BackendUnavailable(f"cannot watch etcd at {peer}: {state.stop}")
            log.info(
                "etcd watch on %s ended (%s); resuming at revision %d",
                peer,
                state.stop or "the stream closed",
                state.next_revision,
            )
            state.stop = None
            self._current = (self._current + 1) % len(self.peers)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _on_watch_line(
        self, line: str, state: _StreamState, task_status: trio.TaskStatus[None]
    ) -> bool:
        """Handle one watch response line; set ``state.stop`` to end the stream.

        Returns True if the line shows the watch is established.
        """
        if not line.strip():
            return False
        try:
            result = _watch_result(line)
            compacted = int(result.get("compact_revision", 0))
        except (StoreError, ValueError, TypeError) as exc:
            state.stop = str(exc)
            return False
        if compacted:
            self._fanout.break_all(
                f"etcd compacted its history past revision {state.next_revision} "
                "while the watch was away; open a new watch and re-read (resync)"
            )
            state.next_revision = compacted
            state.stop = f"history compacted up to revision {compacted}"
            return False
        if result.get("canceled"):
            state.stop = f"etcd cancelled the watch: {result.get('cancel_reason', result)}"
            return False
        established = bool(result.get("created"))
        if established and not state.started:
            state.started = True
            task_status.started()
        events = self._events(result.get("events", []))
        if events:
            self._publish(events)
            state.next_revision = events[-1].item.revision + 1
        return established

    def _publish(self, events: list[Event]) -> None:
        if self._registering:
            # A watch is reading the revision it starts after: hold these until
            # it is registered, so that it neither misses them nor sees older ones.
            self._held.extend(events)
        else:
            self._fanout.publish(events)

    # --- lifetime ------------------------------------------------------------

    async def check(self) -> int:
        """Ask etcd for its current revision; raise BackendUnavailable if no peer answers."""
        return await self._revision()

    async def aclose(self) -> None:
        """See :meth:`Backend.aclose`."""
        if not self._closed:
            self._closed = True
            self._fanout.finish_all()
            if self._background is not None:
                await self._background.aclose()
            with trio.CancelScope(shield=True):
                await self._client.aclose()
        await trio.lowlevel.checkpoint()

    # --- plumbing ------------------------------------------------------------

    def _full(self, key: str) -> bytes:
        return self.prefix.encode() + key.encode()

    def _item(self, kv: dict[str, Any]) -> Item:
        key = _unb64(kv["key"])[len(self.prefix.encode()) :].decode()
        value, expires = _unpack(_unb64(kv.get("value")))
        return Item(key, value, expires, int(kv.get("mod_revision", 0)))

    def _event(self, raw: dict[str, Any]) -> Event:
        kv = raw["kv"]
        if raw.get("type") == "DELETE":
            key = _unb64(kv["key"])[len(self.prefix.encode()) :].decode()
            return Event(EventType.DELETE, Item(key, revision=int(kv["mod_revision"])))
        return Event(EventType.PUT, self._item(kv))

    def _events(self, raw_events: list[dict[str, Any]]) -> list[Event]:
        events = []
        for raw in raw_events:
            try:
                events.append(self._event(raw))
            except (StoreError, ValueError, KeyError) as exc:
                log.warning("skipping an etcd event that is not a trioport item: %r", exc)
        return events

    async def _revision(self) -> int:
        reply = await self._call(
            "/v3/kv/range", {"key": _b64(self._root), "count_only": True, "limit": "1"}
        )
        return int(reply["header"]["revision"])

    async def _read(self, key: str) -> tuple[int, Item | None]:
        """Return the key's mod_revision (0 if absent) and its item if live."""
        reply = await self._call("/v3/kv/range", {"key": _b64(self._full(key))})
        kvs = reply.get("kvs", [])
        if not kvs:
            return 0, None
        item = self._item(kvs[0])
        return item.revision, item if is_live(item, self.clock()) else None

    async def _grant(self, expires: float | None) -> int:
        if expires is None:
            return 0
        ttl = max(1, math.ceil(expires - self.clock()))
        reply = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(reply["ID"])

    def _put_body(self, item: Item, lease: int) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self._full(item.key)), "value": _b64(_pack(item))}
        if lease:
            body["lease"] = str(lease)
        return body

    async def _write_if(self, item: Item, mod_revision: int) -> Item | None:
        """Put ``item`` if its key's mod_revision is still ``mod_revision`` (0: absent).

        Returns the stored item, or None if someone else wrote the key first.
        """
        while True:
            lease = await self._grant(item.expires)
            put = self._put_body(item, lease)
            try:
                reply = await self._call(
                    "/v3/kv/txn",
                    {
                        "compare": [_mod_equals(put["key"], mod_revision)],
                        "success": [{"request_put": put}],
                    },
                )
            except _LeaseNotFound:
                continue
            if not reply.get("succeeded"):
                await self._revoke(lease)
                return None
            return _with_revision(item, reply)

    async def _revoke(self, lease: int) -> None:
        """Give back a lease no key uses (it would expire anyway; this is tidiness)."""
        if lease:
            with contextlib.suppress(StoreError):
                await self._call("/v3/lease/revoke", {"ID": str(lease)})

    def _request(
        self,
        url: str,
        body: dict[str, Any],
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Request:
        request = self._client.build_request(
            "POST", url, json=body, timeout=timeout or self.request_timeout
        )
        request.stream = _Body(request.content)
        return request

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first peer that accepts a connection.

        A call that is safe to repeat (:data:`_IDEMPOTENT`: reads, puts, leases) and
        failed after it was sent, or that etcd refused because it had no leader, is
        tried again on the next peer, for at most :data:`_RETRY_ROUNDS` rounds over
        the peers and at most ``request_timeout`` seconds of retrying: a member that
        dies mid-request or a leader election is then not seen by the caller, and
        an etcd without quorum is reported within about twice ``request_timeout``.
        Any other call raises at once.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("the backend is closed")
        retry = path in _IDEMPOTENT
        failures: list[str] = []
        delay = _BACKOFF_MIN
        give_up_at = trio.current_time() + self.request_timeout
        for attempt in range(len(self.peers) * _RETRY_ROUNDS):
            if attempt and trio.current_time() > give_up_at:
                break
            if attempt and attempt % len(self.peers) == 0:
                await trio.sleep(delay)  # a whole round failed: let an election finish
                delay = min(delay * 4, _BACKOFF_MAX)
            peer = self.peers[self._current]
            try:
                async with self._in_flight:
                    response = await self._client.send(self._request(peer + path, body))
                return _reply(response, peer, path)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failures.append(f"{peer}: {exc!r}")
            except httpx.HTTPError as exc:
                if not retry:
                    raise BackendUnavailable(
                        f"etcd at {peer} failed during {path} ({exc!r}); "
                        "it may or may not have taken effect"
                    ) from exc
                failures.append(f"{peer}: {exc!r}")
            except BackendUnavailable as exc:
                if not (retry or _NO_LEADER in str(exc)):
                    raise
                failures.append(str(exc))
            self._current = (self._current + 1) % len(self.peers)
            if self._closed:
                break
        if not failures or all("Connect" in f for f in failures):
            raise BackendUnavailable("no etcd peer accepted a connection: " + "; ".join(failures))
        raise BackendUnavailable(f"no etcd peer answered {path}: " + "; ".join(failures[-3:]))


class _Body(httpx.AsyncByteStream):
    """A request body iterated by a plain iterator rather than an async generator.

    httpx's own body stream is a generator; a request that fails mid-send leaves
    it suspended, and trio warns when such a generator is garbage collected.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self._data)


class _Once:
    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data


@attrs.define
class _StreamState:
    next_revision: int
    started: bool = False
    stop: str | None = None  # why the current connection should end


def _mod_equals(key_b64: str, mod_revision: int) -> dict[str, Any]:
    return {"target": "MOD", "key": key_b64, "mod_revision": str(mod_revision), "result": "EQUAL"}


def _with_revision(item: Item, reply: dict[str, Any]) -> Item:
    return Item(item.key, item.value, item.expires, int(reply["header"]["revision"]))


def _reply(response: httpx.Response, peer: str, path: str) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if response.status_code == 200 and isinstance(body, dict):
        return body
    message = str(body.get("message", body)) if isinstance(body, dict) else response.text[:200]
    code = body.get("code") if isinstance(body, dict) else None
    if code == _GRPC_NOT_FOUND and "lease not found" in message:
        raise _LeaseNotFound(message)
    if code in (_GRPC_UNAVAILABLE, _GRPC_DEADLINE_EXCEEDED) or response.status_code >= 500:
        raise BackendUnavailable(f"etcd at {peer} {path}: {message}")
    raise StoreError(f"etcd at {peer} {path}: HTTP {response.status_code}: {message}")


def _watch_result(line: str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        raise StoreError(f"etcd sent a watch line that is not JSON: {line[:200]!r}") from None
    if not isinstance(message, dict):
        raise StoreError(f"etcd sent an unexpected watch message: {line[:200]!r}")
    if "error" in message:
        raise StoreError(f"etcd watch error: {message['error']}")
    result = message.get("result", {})
    return result if isinstance(result, dict) else {}


@asynccontextmanager
async def open_etcd_backend(
    peers: Sequence[str],
    *,
    prefix: str = DEFAULT_PREFIX,
    tls_ca_file: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
    clock: Clock = time.time,
    request_timeout: float = 5.0,
) -> AsyncIterator[EtcdBackend]:
    """Connect to etcd at ``peers`` and keep state under ``prefix``; close on exit.

    Args:
        peers: client URLs of etcd members (``http://`` or ``https://``).
        prefix: the etcd key prefix of this cluster's state.
        tls_ca_file: PEM file of the CA that signed etcd's certificate (default:
            the system's trusted CAs).
        tls_cert_file, tls_key_file: a client certificate and key, if etcd asks
            for one (``--client-cert-auth``).
        clock: the wall clock that decides expiry.
        request_timeout: seconds to wait for a connection or a reply.

    Raises:
        BackendUnavailable: no peer answered.
    """
    context = None
    if tls_ca_file or tls_cert_file or tls_key_file:
        context = tls_context(tls_ca_file, tls_cert_file, tls_key_file)
    backend = EtcdBackend(
        peers, prefix=prefix, clock=clock, ssl_context=context, request_timeout=request_timeout
    )
    try:
        await backend.check()
        async with background_tasks() as background:
            backend._background = background
            yield backend
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()
