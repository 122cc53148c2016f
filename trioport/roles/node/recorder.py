"""Session recordings: what a session printed, with timing, streamed to the auth service.

The format (``trioport-recording``, version 1) is JSON Lines, UTF-8, one object per
line. The first line is the header; every other line is an event whose ``t`` is
the time in seconds since the session started (monotonic, microseconds)::

    {"format":"trioport-recording","version":1,"sid":"…","kind":"interactive",
     "user":"alice","login":"alice","server_id":"…","server_hostname":"node1",
     "cluster":"example.com","command":null,"term":"xterm","width":80,"height":24,
     "time":1700000000.5}
    {"t":0.012,"type":"o","data":"aGVsbG8NCg=="}
    {"t":1.5,"type":"r","width":120,"height":40}
    {"t":2.0,"type":"join","user":"bob"}
    {"t":3.1,"type":"e","data":"…"}
    {"t":3.2,"type":"exit","status":0}
    {"t":3.2,"type":"end"}

Event types:

- ``o``: bytes the session sent to the client (a pty's output, or an exec's
  stdout), base64 in ``data``, exactly as sent: the ``o`` data of a recording,
  concatenated, is byte for byte what the client received;
- ``e``: an exec's stderr (base64);
- ``r``: the terminal was resized to ``width`` x ``height`` (columns x rows);
- ``join`` / ``leave``: another party (``user``) joined or left the session;
- ``exit``: the command ended with ``status``, or was killed by ``signal`` (a
  name without ``SIG``, as SSH reports it);
- ``end``: the recording is whole. A recording without it was cut short.

Input is not recorded (passwords are typed there).

**Streaming.** Events are appended to a buffer as they happen; an upload task per
recording sends the buffer to the auth service in numbered chunks
(``PUT /v1/recordings/<sid>/chunks/<n>``) whenever :data:`CHUNK_BYTES` have gathered
or :data:`FLUSH_SECONDS` have passed, and marks the recording complete with the
number of chunks sent once the session ends. Chunks are cut anywhere, not at line
boundaries: the auth service concatenates them.

While the auth service is away the chunks wait and are retried with backoff; the
session goes on. If the buffer reaches :data:`MAX_BUFFER_BYTES` the session's
output waits for the upload (backpressure through the pty or pipe, never an
unbounded buffer). A chunk whose reply was lost is recognised on retry (the auth
service then expects the next index).

**When the recording cannot be stored.** If the auth service refuses the upload
for good (its disk is full or failing: ``507 storage_failed``; or any other
refusal), the recording is abandoned: :attr:`Recording.lost` is set with the
reason, the loss is logged, and the recording is never marked complete (never a
false "complete"; what was stored stays an incomplete ``.part``). What the
session does then is the user's roles' ``record_session.ssh`` policy, applied by
the node's shell (:mod:`.shell`): ``best_effort`` goes on unrecorded with a
``session.upload`` audit event (``success: false``), ``strict`` ends the session
with a message. A strict session also waits, before its command starts, until
the header is stored (:meth:`Recording.wait_stored`), so a disk that is already
failing ends it before anything runs.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import trio

from trioport.authclient import AuthServiceUnavailable
from trioport.errors import AlreadyExists, CompareFailed, TrioportError

from .authlink import AuthLink, backoff_delay

__all__ = [
    "CHUNK_BYTES",
    "FLUSH_SECONDS",
    "FORMAT",
    "MAX_BUFFER_BYTES",
    "Recording",
    "RecordingEvent",
    "RecordingUploader",
    "parse_recording",
]

log = logging.getLogger("trioport.node.recorder")

FORMAT = "trioport-recording"
VERSION = 1
#: Upload once this much has gathered ...
CHUNK_BYTES = 256 * 1024
#: ... or this long after the last upload.
FLUSH_SECONDS = 1.0
#: The largest chunk sent at once (the auth service takes up to 4 MiB).
MAX_CHUNK_BYTES = 1024 * 1024
#: Output waits for the upload when this much is buffered.
MAX_BUFFER_BYTES = 32 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Recording:
    """One session's recording; events go in synchronously, the uploader takes chunks.

    Made by :meth:`RecordingUploader.start`.
    """

    def __init__(
        self,
        sid: str,
        header: Mapping[str, Any],
        *,
        clock: Callable[[], float] = trio.current_time,
        max_buffer: int = MAX_BUFFER_BYTES,
        chunk_bytes: int = CHUNK_BYTES,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.sid = sid
        self.on_lost = on_lost
        self.clock = clock
        self.max_buffer = max_buffer
        self.chunk_bytes = chunk_bytes
        self._start = clock()
        self._buffer = bytearray()
        self._wake = trio.Event()
        self._drained = trio.Event()
        self.finished = False
        #: The upload was abandoned (the auth service refused it).
        self.failed = False
        #: Why it was abandoned (set with :attr:`lost`).
        self.failure = ""
        #: Set when the upload is abandoned: the recording cannot be stored
        #: (``on_lost(reason)`` is called then, once).
        self.lost = trio.Event()
        #: Set once a chunk (the first holds the header) is stored.
        self.stored = trio.Event()
        self._flush = False
        #: Set once the auth service has the whole recording, marked complete.
        self.completed = trio.Event()
        #: Set when the upload ended, completed or not.
        self.done = trio.Event()
        self.bytes_recorded = 0
        self._append({"format": FORMAT, "version": VERSION, "sid": sid, **header}, timed=False)

    # --- writing ------------------------------------------------------------------

    def _append(self, event: dict[str, Any], *, timed: bool = True) -> None:
        if self.finished or self.failed:
            return
        if timed:
            event = {"t": round(self.clock() - self._start, 6), **event}
        line = json.dumps(event, separators=(",", ":"), ensure_ascii=True) + "\n"
        self._buffer += line.encode("ascii")
        self.bytes_recorded += len(line)
        if len(self._buffer) >= self.chunk_bytes:
            self._wake.set()

    async def output(self, data: bytes, stream: str = "o") -> None:
        """Record bytes sent to the client (``o``) or an exec's stderr (``e``).

        Waits while the buffer is full (the upload is behind).
        """
        if not data:
            return
        while len(self._buffer) >= self.max_buffer and not (self.failed or self.finished):
            await self._drained.wait()
        self._append({"type": stream, "data": _b64(bytes(data))})

    def resize(self, width: int, height: int) -> None:
        self._append({"type": "r", "width": int(width), "height": int(height)})

    def party(self, what: str, user: str) -> None:
        """``join`` or ``leave`` of another party."""
        self._append({"type": what, "user": user})

    def exit(self, *, status: int | None = None, signal: str | None = None) -> None:
        if signal is not None:
            self._append({"type": "exit", "signal": signal})
        else:
            self._append({"type": "exit", "status": status})

    def finish(self) -> None:
        """The session ended: write ``end`` and let the uploader complete it."""
        if self.finished:
            return
        self._append({"type": "end"})
        self.finished = True
        self._wake.set()
        self._drained.set()

    def fail(self, why: str) -> None:
        """Abandon the recording (it will never be marked complete)."""
        first = not self.failed
        if first:
            log.error("recording of session %s abandoned: %s", self.sid, why)
            self.failure = why
        self.failed = True
        self._buffer.clear()
        self._wake.set()
        self._drained.set()
        self.lost.set()
        if first and self.on_lost is not None:
            self.on_lost(why)

    def flush(self) -> None:
        """Ask the uploader to send what is buffered now, not at the next flush time."""
        self._flush = True
        self._wake.set()

    async def wait_stored(self) -> bool:
        """Upload the header now and wait until it is stored (True) or lost (False).

        While the auth service cannot be reached this waits (the chunk is
        retried); callers bound it with a cancel scope.
        """
        self.flush()
        async with trio.open_nursery() as nursery:

            async def until(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until, self.stored)
            nursery.start_soon(until, self.lost)
        return self.stored.is_set() and not self.failed

    # --- for the uploader -----------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def take(self, limit: int) -> bytes:
        data = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        self._drained.set()
        self._drained = trio.Event()
        return data

    async def wait_chunk(self, within: float) -> None:
        """Return when a chunk is due: enough gathered, the session ended, or ``within`` s."""
        with trio.move_on_after(within):
            while not (
                self.finished or self.failed or self._flush or len(self._buffer) >= self.chunk_bytes
            ):
                await self._wake.wait()
                self._wake = trio.Event()
        self._flush = False


class RecordingUploader:
    """Starts recordings and uploads each in its own task in ``nursery``.

    The tasks belong to the service, not to the SSH connection: a recording goes
    on uploading after its session closed.
    """

    def __init__(
        self,
        link: AuthLink,
        nursery: trio.Nursery,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        chunk_bytes: int = CHUNK_BYTES,
        max_buffer: int = MAX_BUFFER_BYTES,
    ) -> None:
        self.link = link
        self.nursery = nursery
        self.flush_seconds = flush_seconds
        self.chunk_bytes = chunk_bytes
        self.max_buffer = max_buffer
        self.active: dict[str, Recording] = {}

    def start(
        self,
        sid: str,
        header: Mapping[str, Any],
        *,
        on_lost: Callable[[str], None] | None = None,
    ) -> Recording:
        """Start recording session ``sid``; ``on_lost(reason)`` is called (once, even
        after the session ended) if the recording is abandoned."""
        recording = Recording(
            sid,
            header,
            max_buffer=self.max_buffer,
            chunk_bytes=self.chunk_bytes,
            on_lost=on_lost,
        )
        self.active[sid] = recording
        self.nursery.start_soon(self._upload, recording)
        return recording

    async def _upload(self, rec: Recording) -> None:
        index = 0
        try:
            while True:
                await rec.wait_chunk(self.flush_seconds)
                if rec.failed:
                    return
                data = rec.take(MAX_CHUNK_BYTES)
                if data:
                    if not await self._send(rec, index, data):
                        return
                    index += 1
                    rec.stored.set()
                if rec.finished and not rec.pending:
                    break
            if await self._complete(rec, index):
                rec.completed.set()
        finally:
            self.active.pop(rec.sid, None)
            rec.done.set()

    async def _retry_wait(self, attempt: int) -> None:
        await trio.sleep(backoff_delay(attempt, max_delay=10.0))

    async def _send(self, rec: Recording, index: int, data: bytes) -> bool:
        sid = rec.sid
        attempt = 0
        while True:
            try:
                await self.link.call(lambda c: c.upload_chunk(sid, index, data), within=30)
                return True
            except AuthServiceUnavailable:
                await self._retry_wait(attempt)
                attempt += 1
                continue
            except CompareFailed:
                pass  # maybe stored, and only the reply was lost: ask what is expected
            except TrioportError as exc:
                rec.fail(f"chunk {index} refused: {exc}")
                return False
            try:
                expected = await self.link.call(lambda c: c.next_chunk(sid), within=30)
            except AuthServiceUnavailable:
                await self._retry_wait(attempt)
                attempt += 1
                continue
            except TrioportError as exc:
                rec.fail(f"cannot learn where chunk {index} goes: {exc}")
                return False
            if expected == index + 1:
                return True
            rec.fail(f"the auth service expects chunk {expected}, not {index}")
            return False

    async def _complete(self, rec: Recording, chunks: int) -> bool:
        sid = rec.sid
        attempt = 0
        while True:
            try:
                await self.link.call(lambda c: c.complete_recording(sid, chunks=chunks), within=60)
                return True
            except AuthServiceUnavailable:
                await self._retry_wait(attempt)
                attempt += 1
            except AlreadyExists:
                return True  # completed by our earlier try whose reply was lost
            except TrioportError as exc:
                rec.fail(f"cannot complete it: {exc}")
                return False


# --- reading ------------------------------------------------------------------------


@attrs.frozen
class RecordingEvent:
    """One event of a recording; ``data`` holds the decoded bytes of ``o``/``e`` events."""

    t: float
    type: str
    data: bytes = b""
    fields: Mapping[str, Any] = attrs.Factory(dict)


def parse_recording(blob: bytes) -> tuple[dict[str, Any], list[RecordingEvent]]:
    """Read a recording: its header and its events, in order.

    Raises:
        ValueError: not a trioport recording of a version this code reads.
    """
    lines = iter(blob.splitlines())
    try:
        header = json.loads(next(lines))
    except (StopIteration, ValueError):
        raise ValueError("not a trioport recording: no header line") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError("not a trioport recording")
    if header.get("version") != VERSION:
        raise ValueError(f"recording version {header.get('version')!r} is not supported")
    return header, list(_events(lines))


def _events(lines: Iterator[bytes]) -> Iterator[RecordingEvent]:
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            kind = str(raw.pop("type"))
            t = float(raw.pop("t"))
            data = base64.b64decode(raw.pop("data")) if kind in ("o", "e") else b""
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"recording line {number} is malformed: {exc}") from None
        yield RecordingEvent(t=t, type=kind, data=data, fields=raw)
