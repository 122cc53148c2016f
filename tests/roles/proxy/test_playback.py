"""Replaying recordings: the decoder, the pacing, and the asciicast v2 writer.

Recordings here are written by the node's own recorder
(:class:`trioport.roles.node.recorder.Recording`, with a clock the test moves),
so the decoder is checked against the format as it is really written. The
asciicast documents are checked line by line against the v2 format, and handed
to asciinema's own ``asciinema cat``, which must print the session's output.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from trioport.roles.node.recorder import Recording
from trioport.roles.proxy.playback import (
    DEFAULT_SIZE,
    AsciicastWriter,
    Frame,
    Pacer,
    PlaybackEvent,
    RecordingDecoder,
    RecordingHeader,
    decode_recording,
    output_bytes,
    to_asciicast,
)

HEADER = {
    "kind": "interactive",
    "user": "alice",
    "login": "root",
    "server_id": "6f1c",
    "server_hostname": "web1",
    "cluster": "example.test",
    "command": None,
    "term": "xterm-256color",
    "width": 80,
    "height": 24,
    "time": 1_700_000_000.75,
}
#: "é" is two bytes in UTF-8: the recording below splits it across two outputs.
E_ACUTE = "é".encode()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _recorded(header: dict[str, Any] | None = None) -> bytes:
    """A recording as the node writes it: output, a resize, a party, a long idle."""
    clock = Clock()
    rec = Recording("sid-1", header or HEADER, clock=clock)
    clock.now += 0.5
    await rec.output(b"$ echo hi\r\nhi\r\ncaf" + E_ACUTE[:1])
    clock.now += 0.25
    await rec.output(E_ACUTE[1:] + b" \xff!\r\n")  # the rest of the character, then a bad byte
    clock.now += 1.0
    rec.resize(120, 40)
    rec.party("join", "bob")
    clock.now += 3600.0  # nobody typed for an hour
    await rec.output(b"$ exit\r\n")
    rec.party("leave", "bob")
    rec.exit(status=0)
    rec.finish()
    return rec.take(10**9)


async def test_a_recording_decodes_to_its_header_and_events_in_one_piece_or_byte_by_byte() -> None:
    blob = await _recorded()
    header, events, complete = decode_recording(blob)
    assert complete
    assert header == RecordingHeader(
        sid="sid-1",
        kind="interactive",
        user="alice",
        login="root",
        server_id="6f1c",
        server_hostname="web1",
        cluster="example.test",
        command=None,
        term="xterm-256color",
        width=80,
        height=24,
        time=1_700_000_000.75,
    )
    assert [e.type for e in events] == ["o", "o", "r", "join", "o", "leave", "exit", "end"]
    assert [e.t for e in events[:3]] == [0.5, 0.75, 1.75]
    assert events[2].size == (120, 40)
    assert events[3].fields == {"user": "bob"}
    assert events[6].fields == {"status": 0}
    # What the client saw, byte for byte (bad UTF-8 included).
    assert output_bytes(events) == b"$ echo hi\r\nhi\r\ncaf" + E_ACUTE + b" \xff!\r\n$ exit\r\n"

    decoder = RecordingDecoder()
    trickled: list[PlaybackEvent] = []
    for i in range(len(blob)):
        trickled += decoder.feed(blob[i : i + 1])
    trickled += decoder.close()
    assert trickled == events and decoder.ended and decoder.header == header


async def test_a_recording_cut_short_or_without_a_final_newline_still_decodes() -> None:
    blob = await _recorded()
    lines = blob.splitlines(keepends=True)
    cut = b"".join(lines[:3]).rstrip(b"\n")  # header and two outputs; no "end", no newline
    header, events, complete = decode_recording(cut)
    assert header.sid == "sid-1" and not complete
    assert output_bytes(events) == b"$ echo hi\r\nhi\r\ncaf" + E_ACUTE + b" \xff!\r\n"


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "it is empty"),
        (b"hello\n", "first line is not JSON"),
        (b'{"format":"asciicast"}\n', "not a trioport recording"),
        (b'{"format":"trioport-recording","version":7,"sid":"x"}\n', "version 7"),
        (b'{"format":"trioport-recording","version":1}\n', "no session id"),
        (b'{"format":"trioport-recording","version":1,"sid":"x"}\n{"t":1}\n', "line 2"),
        (
            b'{"format":"trioport-recording","version":1,"sid":"x"}\n\n'
            b'{"t":1,"type":"o","data":"not base64!"}\n',
            "line 3",
        ),
        (b'{"format":"trioport-recording","version":1,"sid":"x"}\n[1, "o"]\n', "line 2"),
        (b'{"format":"trioport-recording","version":1,"sid":"x"}\n{"t":"soon","type":"o"}', "line"),
    ],
)
def test_what_is_not_a_recording_is_refused_with_the_line_at_fault(
    blob: bytes, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decode_recording(blob)


def test_a_line_past_the_limit_is_refused_before_it_is_buffered_whole() -> None:
    decoder = RecordingDecoder(max_line=1024)
    decoder.feed(b'{"format":"trioport-recording","version":1,"sid":"x"}\n')
    with pytest.raises(ValueError, match="over 1024 bytes"):
        decoder.feed(b'{"t":1,"type":"o","data":"' + b"A" * 2000)


def _event(t: float, data: bytes = b"x", kind: str = "o") -> PlaybackEvent:
    return PlaybackEvent(t=t, type=kind, data=data)


def test_pacing_keeps_the_recorded_gaps_scaled_by_the_speed_and_cuts_long_pauses() -> None:
    events = [
        _event(0.5),
        _event(1.0),
        PlaybackEvent(t=2.0, type="r", fields={"width": 1, "height": 1}),  # not output
        _event(3600.0, b"late"),
        _event(3600.5, b"err", "e"),
    ]
    frames = list(Pacer(speed=1.0, max_pause=3.0).frames(events))
    assert frames == [
        Frame(0.5, b"x"),
        Frame(1.0, b"x"),
        Frame(4.0, b"late"),  # an hour of nothing replays as 3 seconds
        Frame(4.5, b"err", "e"),
    ]
    twice = [f.at for f in Pacer(speed=2.0, max_pause=3.0).frames(events)]
    assert twice == [0.25, 0.5, 2.0, 2.25]
    uncut = [f.at for f in Pacer(speed=1.0, max_pause=0).frames(events)]
    assert uncut == [0.5, 1.0, 3600.0, 3600.5]


def test_pacing_carries_over_between_calls_and_never_goes_backwards() -> None:
    pacer = Pacer(speed=1.0, max_pause=None)
    first = list(pacer.frames([_event(1.0), _event(2.0)]))
    later = list(pacer.frames([_event(1.5), _event(2.5)]))  # time went backwards: no wait
    assert [f.at for f in first + later] == [1.0, 2.0, 2.0, 2.5]


@pytest.mark.parametrize("speed", [0, -1, float("nan"), float("inf")])
def test_a_speed_that_is_not_a_positive_number_is_refused(speed: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        Pacer(speed=speed)


def _parse_asciicast(text: str) -> tuple[dict[str, Any], list[list[Any]]]:
    """Check ``text`` against asciicast v2 and return its header and events."""
    assert text.endswith("\n")
    lines = text.splitlines()
    header = json.loads(lines[0])
    assert isinstance(header, dict) and header["version"] == 2
    for key in ("width", "height"):
        assert isinstance(header[key], int) and header[key] > 0
    if "timestamp" in header:
        assert isinstance(header["timestamp"], int)
    events = [json.loads(line) for line in lines[1:]]
    previous = 0.0
    for event in events:
        assert isinstance(event, list) and len(event) == 3
        t, code, data = event
        assert isinstance(t, float | int) and t >= previous
        previous = t
        assert code in ("o", "r", "m") and isinstance(data, str)
        if code == "r":
            cols, _, rows = data.partition("x")
            assert cols.isdigit() and rows.isdigit()
    return header, events


async def test_asciicast_v2_document_holds_the_output_resizes_and_parties() -> None:
    header, events, _ = decode_recording(await _recorded())
    text = to_asciicast(header, events, idle_time_limit=3.0)
    doc, cast = _parse_asciicast(text)
    assert doc["width"] == 80 and doc["height"] == 24
    assert doc["timestamp"] == 1_700_000_000
    assert doc["idle_time_limit"] == 3.0
    assert doc["duration"] == pytest.approx(3601.75)
    assert doc["env"] == {"TERM": "xterm-256color"}
    assert "alice" in doc["title"] and "sid-1" in doc["title"]
    assert cast == [
        [0.5, "o", "$ echo hi\r\nhi\r\ncaf"],  # the "é" waits for its second byte ...
        [0.75, "o", "é \ufffd!\r\n"],  # ... and the byte that is not UTF-8 is U+FFFD
        [1.75, "r", "120x40"],
        [1.75, "m", "bob joined"],
        [3601.75, "o", "$ exit\r\n"],
        [3601.75, "m", "bob left"],
    ]


def test_asciicast_of_a_command_without_a_pty_uses_a_default_size_and_includes_stderr() -> None:
    header = RecordingHeader(sid="s2", kind="exec", command="ls /nope", time=5.0)
    events = [_event(0.1, b"out\n"), _event(0.2, b"err\n", "e"), _event(0.3, b"\xe2\x82", "o")]
    doc, cast = _parse_asciicast(to_asciicast(header, events))
    assert (doc["width"], doc["height"]) == DEFAULT_SIZE
    assert doc["command"] == "ls /nope" and "idle_time_limit" not in doc
    # An incomplete character at the very end is flushed as U+FFFD, not lost.
    assert cast == [[0.1, "o", "out\n"], [0.2, "o", "err\n"], [0.3, "o", "\ufffd"]]


def test_asciicast_written_piece_by_piece_equals_the_whole_but_for_its_duration() -> None:
    header = RecordingHeader(sid="s3", width=100, height=30)
    events = [_event(i / 10, f"line {i}\r\n".encode()) for i in range(10)]
    writer = AsciicastWriter(header)
    pieces = [writer.header_line()]
    for i in range(0, 10, 3):
        pieces += writer.event_lines(events[i : i + 3])
    pieces += writer.finish()
    streamed = _parse_asciicast("".join(pieces))
    whole = _parse_asciicast(to_asciicast(header, events))
    assert streamed[1] == whole[1]
    assert {k: v for k, v in whole[0].items() if k != "duration"} == streamed[0]


async def test_asciinema_cat_prints_the_sessions_output(tmp_path: Path) -> None:
    asciinema = shutil.which("asciinema")
    assert asciinema, "asciinema is a test dependency: python3 -m pip install asciinema"
    header, events, _ = decode_recording(await _recorded())
    path = tmp_path / "session.cast"
    path.write_text(to_asciicast(header, events), encoding="utf-8")
    with trio.fail_after(30):
        done = await trio.run_process(
            [asciinema, "cat", str(path)],
            capture_stdout=True,
            capture_stderr=True,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # no controlling terminal for it to put in raw mode
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == "$ echo hi\r\nhi\r\ncafé \ufffd!\r\n$ exit\r\n".encode()


def test_the_recorders_base64_is_what_the_decoder_reads() -> None:
    # A hand-written line with every byte value: the data survives exactly.
    data = bytes(range(256))
    line = json.dumps({"t": 0.0, "type": "o", "data": base64.b64encode(data).decode()})
    head = json.dumps({"format": "trioport-recording", "version": 1, "sid": "x"})
    _, events, _ = decode_recording(f"{head}\n{line}\n".encode())
    assert output_bytes(events) == data
