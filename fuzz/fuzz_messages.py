"""Fuzz every SSH message parser, by message number, and the payloads inside them.

The first input byte is the context: which authentication method is in progress
(it decides what message 60 is, RFC 4252 §7, RFC 4256 §3.2) and whether the rest
is also read as pty modes. The rest is one packet payload, message number first.
A payload that parses must also survive the way back: encoding the message and
parsing it again gives the same message, and the same holds for the CHANNEL_OPEN,
CHANNEL_REQUEST and GLOBAL_REQUEST payloads decoded from it (RFC 4254 §4-§7).
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _harness import main, tolerate_known_bugs

from trioport.errors import DecodeError
from trioport.sshproto import messages as m

_METHODS = (None, "publickey", "password", "keyboard-interactive")


def _same(what: str, first: object, again: object) -> None:
    if first != again:
        raise AssertionError(f"{what} changed on the way back: {first!r} -> {again!r}")


def _inner(msg: m.Message) -> None:
    """The type-specific payloads; refusals are DecodeError, round trips exact."""
    try:
        if isinstance(msg, m.ChannelOpen):
            opened = m.decode_channel_open(0, msg.kind, msg.data)
            again = m.decode_channel_open(0, opened.kind, m.encode_channel_open(opened))
            _same("channel open", opened, again)
        elif isinstance(msg, m.ChannelRequest):
            request = m.decode_channel_request(msg.name, msg.data)
            _same(
                "channel request",
                request,
                m.decode_channel_request(*m.encode_channel_request(request)),
            )
        elif isinstance(msg, m.GlobalRequest):
            request = m.decode_global_request(msg.name, msg.data)
            again = m.decode_global_request(*m.encode_global_request(request))
            _same("global request", request, again)
    except DecodeError:
        pass


def check(data: bytes) -> None:
    if not data:
        return
    context, payload = data[0], data[1:]
    if context & 4:
        try:
            modes = m.decode_pty_modes(payload)
        except DecodeError:
            pass
        else:
            _same("pty modes", modes, m.decode_pty_modes(m.encode_pty_modes(modes)))
    method = _METHODS[context & 3]
    try:
        msg = m.parse(payload, auth_method=method)
    except DecodeError:
        return
    _same("message", msg, m.parse(bytes(msg), auth_method=method))
    _inner(msg)


TestOneInput = tolerate_known_bugs("messages", check)

if __name__ == "__main__":
    main(TestOneInput, "messages", instrument=("trioport",))
