"""Replaying session recordings: decode, pace, and convert to asciicast v2.

A node records each session in the ``trioport-recording`` format (JSON Lines:
a header object, then one timed event per line; :mod:`trioport.roles.node.recorder`
writes it and documents every field) and the auth service stores it whole
(:mod:`trioport.roles.auth.recordings`). This module is what ``tsh play`` is
built on, and it does no I/O of its own (bytes in, frames and text out), so
the caller decides where the bytes come from and when to sleep:

- :class:`RecordingDecoder` reads a recording fed in pieces of any size (the
  auth API hands out large recordings in pieces) and yields
  :class:`RecordingHeader` and :class:`PlaybackEvent` values;
- :class:`Pacer` turns output events into :class:`Frame` values, each with the
  moment it is due relative to the start of playback: the recorded gaps,
  divided by a speed factor, with any pause longer than ``max_pause`` recorded
  seconds cut down to ``max_pause`` (an idle terminal replays as a short
  pause, not as an hour of nothing);
- :class:`AsciicastWriter` writes an asciicast v2 document (the format
  asciinema 2 plays, https://docs.asciinema.org/manual/asciicast/v2/): a header
  object ``{"version": 2, "width", "height", "timestamp", ...}`` and one
  ``[time, code, data]`` array per line, where ``o`` is output, ``r`` a resize
  (``"COLSxROWS"``) and ``m`` a marker (we mark parties joining and leaving).
  asciicast data is text, so output bytes are decoded as UTF-8 incrementally:
  a character split across two recorded chunks is kept whole, and bytes that
  are not UTF-8 become U+FFFD.

Timing is the recording's own: ``t`` is seconds since the session started, on
the node's monotonic clock. Times going backwards (a malformed recording) are
treated as no time at all, never as a negative sleep.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

__all__ = [
    "ASCIICAST_VERSION",
    "DEFAULT_MAX_PAUSE",
    "DEFAULT_SIZE",
    "FORMAT",
    "MAX_LINE_BYTES",
    "VERSION",
    "AsciicastWriter",
    "Frame",
    "Pacer",
    "PlaybackEvent",
    "RecordingDecoder",
    "RecordingHeader",
    "decode_recording",
    "output_bytes",
    "to_asciicast",
]

#: The recording format this module reads (written by the node's recorder).
FORMAT = "trioport-recording"
#: The version of it.
VERSION = 1
#: The asciicast format version written.
ASCIICAST_VERSION = 2
#: Recorded pauses longer than this many seconds replay as this long (0: never cut).
DEFAULT_MAX_PAUSE = 3.0
#: The terminal size assumed when a recording has none (a command without a pty).
DEFAULT_SIZE = (80, 24)
#: The longest line accepted (one event's base64 data and its JSON).
MAX_LINE_BYTES = 16 * 1024 * 1024
#: Event types whose ``data`` is base64 output.
_OUTPUT = frozenset({"o", "e"})


@attrs.frozen
class RecordingHeader:
    """The first line of a recording: who ran what, where, and on which terminal.

    ``width``/``height``/``term`` are ``None`` for a command run without a pty;
    ``time`` is the session's start as a Unix time.
    """

    sid: str
    kind: str = "interactive"
    user: str = ""
    login: str = ""
    server_id: str = ""
    server_hostname: str = ""
    cluster: str = ""
    command: str | None = None
    term: str | None = None
    width: int | None = None
    height: int | None = None
    time: float | None = None

    @classmethod
    def from_json(cls, raw: Any) -> RecordingHeader:
        """Check and read a header object.

        Raises:
            ValueError: not a trioport recording, or a version this code cannot read.
        """
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError("not a trioport recording")
        if raw.get("version") != VERSION:
            raise ValueError(f"recording version {raw.get('version')!r} is not supported")
        sid = raw.get("sid")
        if not isinstance(sid, str) or not sid:
            raise ValueError("the recording's header has no session id")

        def text(key: str) -> str:
            value = raw.get(key)
            return value if isinstance(value, str) else ""

        def optional_text(key: str) -> str | None:
            value = raw.get(key)
            return value if isinstance(value, str) else None

        def size(key: str) -> int | None:
            value = raw.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                return None
            return value

        start = raw.get("time")
        return cls(
            sid=sid,
            kind=text("kind") or "interactive",
            user=text("user"),
            login=text("login"),
            server_id=text("server_id"),
            server_hostname=text("server_hostname"),
            cluster=text("cluster"),
            command=optional_text("command"),
            term=optional_text("term"),
            width=size("width"),
            height=size("height"),
            time=float(start) if _is_time(start) else None,
        )


@attrs.frozen
class PlaybackEvent:
    """One recorded event.

    ``type`` is ``o`` (output), ``e`` (a command's stderr), ``r`` (resize),
    ``join``/``leave`` (another party), ``exit`` or ``end``; types this code does
    not know are kept as they are, so newer recordings still replay. ``data`` is
    the decoded output of ``o``/``e``; ``fields`` holds the rest of the line
    (``width``/``height``, ``user``, ``status``/``signal``).
    """

    t: float
    type: str
    data: bytes = b""
    fields: Mapping[str, Any] = attrs.Factory(dict)

    @property
    def size(self) -> tuple[int, int] | None:
        """A resize's (columns, rows), or None."""
        width, height = self.fields.get("width"), self.fields.get("height")
        if self.type != "r" or not _is_count(width) or not _is_count(height):
            return None
        return int(width), int(height)


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class RecordingDecoder:
    """Reads a recording fed in pieces cut anywhere.

    Call :meth:`feed` with each piece and :meth:`close` at the end of the input;
    both return the events completed so far. :attr:`header` is set once the
    first line has arrived, and :attr:`ended` once the ``end`` event has (a
    recording without it was cut short).
    """

    def __init__(self, *, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self.header: RecordingHeader | None = None
        self.ended = False
        self._buffer = bytearray()
        self._line = 0
        self._closed = False

    def feed(self, data: bytes) -> list[PlaybackEvent]:
        """Add bytes; return the events whose lines are now complete.

        Raises:
            ValueError: the recording is malformed (the message names the line).
        """
        if self._closed:
            raise ValueError("the recording was already closed")
        self._buffer += data
        out: list[PlaybackEvent] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            self._take(bytes(self._buffer[start:end]), out)
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self.max_line:
            raise ValueError(f"recording line {self._line + 1} is over {self.max_line} bytes")
        return out

    def close(self) -> list[PlaybackEvent]:
        """The input ended: decode a last line without a newline.

        Raises:
            ValueError: no header was read, or the last line is malformed.
        """
        out: list[PlaybackEvent] = []
        if not self._closed:
            self._closed = True
            if self._buffer.strip():
                self._take(bytes(self._buffer), out)
            self._buffer.clear()
        if self.header is None:
            raise ValueError("not a trioport recording: it is empty")
        return out

    def _take(self, line: bytes, out: list[PlaybackEvent]) -> None:
        self._line += 1
        if self.header is None:
            try:
                raw = json.loads(line)
            except ValueError:
                raise ValueError("not a trioport recording: its first line is not JSON") from None
            self.header = RecordingHeader.from_json(raw)
            return
        if not line.strip():
            return
        event = _event(line, self._line)
        if event.type == "end":
            self.ended = True
        out.append(event)


def _event(line: bytes, number: int) -> PlaybackEvent:
    try:
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        kind = raw.pop("type")
        t = raw.pop("t")
        if not isinstance(kind, str) or not _is_time(t):
            raise ValueError("type must be a string and t a number")
        data = b""
        if kind in _OUTPUT:
            encoded = raw.pop("data")
            if not isinstance(encoded, str):
                raise ValueError("data must be a base64 string")
            data = base64.b64decode(encoded, validate=True)
    except (ValueError, KeyError, binascii.Error) as exc:
        raise ValueError(f"recording line {number} is malformed: {exc}") from None
    return PlaybackEvent(t=max(0.0, float(t)), type=kind, data=data, fields=raw)


def decode_recording(blob: bytes) -> tuple[RecordingHeader, list[PlaybackEvent], bool]:
    """A whole recording: its header, its events, and whether it is complete.

    Raises:
        ValueError: not a trioport recording, or malformed.
    """
    decoder = RecordingDecoder(max_line=max(MAX_LINE_BYTES, len(blob)))
    events = decoder.feed(blob)
    events += decoder.close()
    assert decoder.header is not None  # close() raises otherwise
    return decoder.header, events, decoder.ended


def output_bytes(events: Iterable[PlaybackEvent], *, stderr: bool = True) -> bytes:
    """What the client received, without timing: the ``o`` data (and ``e`` with ``stderr``)."""
    wanted = _OUTPUT if stderr else {"o"}
    return b"".join(e.data for e in events if e.type in wanted)


# --- pacing ---------------------------------------------------------------------------


@attrs.frozen
class Frame:
    """Output to write ``at`` seconds after playback started, to ``stream`` (o or e)."""

    at: float
    data: bytes
    stream: str = "o"


class Pacer:
    """Schedules output events for a replay in real time.

    Args:
        speed: how many times faster than recorded (2.0 is twice as fast).
        max_pause: recorded gaps between outputs longer than this many seconds
            are cut down to it before the speed applies; 0 or None keeps them.

    Raises:
        ValueError: a speed that is not a positive number, or a negative max_pause.
    """

    def __init__(self, *, speed: float = 1.0, max_pause: float | None = DEFAULT_MAX_PAUSE) -> None:
        if not _is_time(speed) or speed <= 0:
            raise ValueError("the speed is a positive number (1 is the recorded pace)")
        if max_pause is not None and (not _is_time(max_pause) or max_pause < 0):
            raise ValueError("the longest pause is a number of seconds, 0 or more")
        self.speed = float(speed)
        self.max_pause = float(max_pause) if max_pause else None
        #: Seconds into playback of the last frame scheduled.
        self.at = 0.0
        self._last_t: float | None = None

    def frames(self, events: Iterable[PlaybackEvent]) -> Iterator[Frame]:
        """Frames for the output among ``events``; call again with later events."""
        for event in events:
            if event.type not in _OUTPUT or not event.data:
                continue
            gap = event.t - (self._last_t if self._last_t is not None else 0.0)
            gap = max(0.0, gap)
            if self.max_pause is not None:
                gap = min(gap, self.max_pause)
            self._last_t = max(event.t, self._last_t or 0.0)
            self.at += gap / self.speed
            yield Frame(at=self.at, data=event.data, stream=event.type)


# --- asciicast v2 -----------------------------------------------------------------------


_PARTY = {"join": "joined", "leave": "left"}


def _time(t: float) -> float:
    return round(t, 6)


class AsciicastWriter:
    """Writes a recording as an asciicast v2 document, line by line.

    Times are the recorded ones (asciinema's player has its own speed option);
    ``idle_time_limit`` goes in the header, where players read it as the longest
    pause to show. Output (``o`` and a command's ``e``) becomes ``o`` events,
    resizes ``r`` events, and parties joining or leaving ``m`` markers
    (``"bob joined"``). The header's ``timestamp`` is the session's start.
    """

    def __init__(
        self,
        header: RecordingHeader,
        *,
        idle_time_limit: float | None = None,
        duration: float | None = None,
    ) -> None:
        self.header = header
        self.idle_time_limit = idle_time_limit
        self.duration = duration
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in _OUTPUT}
        self._last_t = 0.0

    def header_line(self) -> str:
        """The first line of the document (with its newline)."""
        h = self.header
        width, height = h.width or DEFAULT_SIZE[0], h.height or DEFAULT_SIZE[1]
        doc: dict[str, Any] = {"version": ASCIICAST_VERSION, "width": width, "height": height}
        if h.time is not None:
            doc["timestamp"] = int(h.time)
        if self.duration is not None:
            doc["duration"] = _time(self.duration)
        if self.idle_time_limit:
            doc["idle_time_limit"] = self.idle_time_limit
        if h.command is not None:
            doc["command"] = h.command
        where = f"{h.login}@{h.server_hostname}" if h.server_hostname else h.login
        doc["title"] = f"{h.user} as {where}, session {h.sid}" if h.user else f"session {h.sid}"
        doc["env"] = {"TERM": h.term} if h.term else {}
        return _line(doc)

    def event_lines(self, events: Iterable[PlaybackEvent]) -> Iterator[str]:
        """Lines (with newlines) for ``events``; call again with later events."""
        for event in events:
            t = max(event.t, self._last_t)  # never backwards, whatever the input says
            self._last_t = t
            if event.type in _OUTPUT:
                text = self._decoders[event.type].decode(event.data)
                if text:
                    yield _line([_time(t), "o", text])
            elif event.type == "r" and event.size is not None:
                yield _line([_time(t), "r", "{}x{}".format(*event.size)])
            elif event.type in ("join", "leave"):
                who = str(event.fields.get("user") or "someone")
                yield _line([_time(t), "m", f"{who} {_PARTY[event.type]}"])

    def finish(self) -> Iterator[str]:
        """Lines for output still held back (an incomplete UTF-8 sequence at the end)."""
        for decoder in self._decoders.values():
            text = decoder.decode(b"", final=True)
            if text:
                yield _line([_time(self._last_t), "o", text])


def _line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")) + "\n"


def to_asciicast(
    header: RecordingHeader,
    events: Iterable[PlaybackEvent],
    *,
    idle_time_limit: float | None = None,
) -> str:
    """A whole recording as one asciicast v2 document (with its ``duration``)."""
    events = list(events)
    duration = max((e.t for e in events), default=0.0)
    writer = AsciicastWriter(header, idle_time_limit=idle_time_limit, duration=duration)
    return "".join([writer.header_line(), *writer.event_lines(events), *writer.finish()])
