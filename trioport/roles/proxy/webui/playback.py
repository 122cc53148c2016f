"""Recordings for the browser's player, and the QR code of a TOTP enrolment.

:func:`recording_events` turns a session recording (the node's
``trioport-recording`` JSON Lines, :mod:`trioport.roles.node.recorder`) into what
the web UI's player draws with xterm.js: ``{"t": ms, "type": "o", "data": text}``
for output and ``{"t": ms, "type": "r", "data": "COLSxROWS"}`` for a resize. The
output bytes are decoded as UTF-8 with one incremental decoder over the whole
recording, so a character split across two events is not mangled, and bytes that
are not UTF-8 become U+FFFD. The terminal's first size (from the header) is the
first event, at ``t = 0``.

:func:`qr_svg` draws a TOTP ``otpauth://`` URI as an SVG QR code (``qrcode``'s
path image: no Pillow, no script; the web UI shows it as an image).
"""

from __future__ import annotations

import codecs
import io
from typing import Any

import qrcode
import qrcode.image.svg

from trioport.roles.node.recorder import parse_recording

__all__ = ["qr_svg", "recording_events"]


def recording_events(blob: bytes) -> dict[str, Any]:
    """The player's document for a recording: ``events``, ``duration_ms``, header facts.

    Raises:
        ValueError: not a trioport recording this code reads.
    """
    header, events = parse_recording(blob)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out: list[dict[str, Any]] = []
    width, height = header.get("width"), header.get("height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        out.append({"t": 0, "type": "r", "data": f"{width}x{height}"})
    last = 0
    for event in events:
        t = max(0, round(event.t * 1000))
        last = max(last, t)
        if event.type in ("o", "e"):
            text = decoder.decode(event.data)
            if text:
                out.append({"t": t, "type": "o", "data": text})
        elif event.type == "r":
            cols, rows = event.fields.get("width"), event.fields.get("height")
            if isinstance(cols, int) and isinstance(rows, int):
                out.append({"t": t, "type": "r", "data": f"{cols}x{rows}"})
    tail = decoder.decode(b"", final=True)
    if tail:
        out.append({"t": last, "type": "o", "data": tail})
    return {
        "sid": header.get("sid"),
        "user": header.get("user"),
        "login": header.get("login"),
        "node_name": header.get("server_hostname"),
        "start": header.get("time"),
        "duration_ms": last,
        "complete": bool(events) and events[-1].type == "end",
        "events": out,
    }


def qr_svg(uri: str) -> str:
    """``uri`` as an SVG QR code (medium error correction)."""
    code = qrcode.QRCode(
        error_correction=qrcode.constants.ERROR_CORRECT_M,
        image_factory=qrcode.image.svg.SvgPathImage,
        border=4,
    )
    code.add_data(uri)
    code.make(fit=True)
    out = io.BytesIO()
    code.make_image().save(out)
    text = out.getvalue().decode("utf-8")
    return text[text.index("<svg") :]  # no XML declaration: the page embeds it
