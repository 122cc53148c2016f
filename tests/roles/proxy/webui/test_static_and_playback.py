"""The front end's files, a recording for the player, and the QR code, without a cluster."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from trioport.roles.proxy.webui.http import PAGE_CSP
from trioport.roles.proxy.webui.playback import qr_svg, recording_events
from trioport.roles.proxy.webui.static import StaticFiles


def _site(root: Path) -> StaticFiles:
    (root / "vendor").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>trioport</title>")
    (root / "app.js").write_text("export {};")
    (root / "vendor" / "xterm.css").write_text(".xterm {}")
    (root / ".secret").write_text("hidden")
    (root.parent / "outside.txt").write_text("not served")
    return StaticFiles(root)


async def test_files_are_served_with_their_types_and_the_page_policy(tmp_path: Path) -> None:
    files = _site(tmp_path / "static")
    js = await files.serve("/web/app.js")
    assert js.status == 200 and js.body == b"export {};"
    assert js.content_type.startswith("text/javascript") and js.csp == PAGE_CSP
    css = await files.serve("/web/vendor/xterm.css")
    assert css.content_type.startswith("text/css")
    page = await files.serve("/web/")
    assert page.body.startswith(b"<!doctype html>") and page.cache_control == "no-store"


async def test_anything_else_is_the_single_page_app_never_a_file_outside(tmp_path: Path) -> None:
    files = _site(tmp_path / "static")
    index = (tmp_path / "static" / "index.html").read_bytes()
    for path in (
        "/web/nodes",
        "/web/recordings/abc",
        "/web/../outside.txt",
        "/web/%2e%2e/outside.txt",
        "/web/vendor/..%2f..%2foutside.txt",
        "/web/.secret",
        "/web/app.js%00.png",
        "/web/vendor\\..\\..\\outside.txt",
    ):
        answer = await files.serve(path)
        assert answer.status == 200 and answer.body == index, path
        assert answer.content_type.startswith("text/html"), path


async def test_an_unbuilt_front_end_says_how_to_build_it(tmp_path: Path) -> None:
    answer = await StaticFiles(tmp_path / "missing").serve("/web/")
    assert answer.status == 503
    assert b"npm ci" in answer.body and answer.csp == PAGE_CSP


def _recording(events: list[dict[str, object]]) -> bytes:
    header = {
        "format": "trioport-recording",
        "version": 1,
        "sid": "s1",
        "user": "alice",
        "login": "alice",
        "server_hostname": "node1",
        "width": 80,
        "height": 24,
        "time": 1700000000.5,
    }
    lines = [json.dumps(header)] + [json.dumps(e) for e in events]
    return ("\n".join(lines) + "\n").encode()


def _o(t: float, data: bytes) -> dict[str, object]:
    return {"t": t, "type": "o", "data": base64.b64encode(data).decode()}


def test_a_recording_becomes_player_events_in_milliseconds() -> None:
    snowman = "☃".encode()
    blob = _recording(
        [
            _o(0.0015, b"hello " + snowman[:1]),  # a character cut between two events
            _o(0.25, snowman[1:] + b"\r\n"),
            {"t": 1.0, "type": "r", "width": 120, "height": 40},
            _o(1.5, b"bad \xff byte"),
            {"t": 2.0, "type": "exit", "status": 0},
            {"t": 2.0, "type": "end"},
        ]
    )
    doc = recording_events(blob)
    assert doc["events"] == [
        {"t": 0, "type": "r", "data": "80x24"},
        {"t": 2, "type": "o", "data": "hello "},
        {"t": 250, "type": "o", "data": "☃\r\n"},
        {"t": 1000, "type": "r", "data": "120x40"},
        {"t": 1500, "type": "o", "data": "bad \ufffd byte"},
    ]
    assert doc["duration_ms"] == 2000 and doc["complete"] is True
    assert doc["user"] == "alice" and doc["node_name"] == "node1"


def test_a_cut_recording_plays_what_it_has() -> None:
    doc = recording_events(_recording([_o(0.5, b"partial")]))
    assert doc["complete"] is False and doc["events"][-1]["data"] == "partial"


def test_the_qr_code_is_a_plain_svg() -> None:
    svg = qr_svg("otpauth://totp/example.test:alice?secret=JBSWY3DPEHPK3PXP&issuer=example.test")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<script" not in svg and "<path" in svg
