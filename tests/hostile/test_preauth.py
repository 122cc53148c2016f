"""Nothing runs before authentication (Erlang/OTP CVE-2025-32433, paramiko
CVE-2018-7750, asyncssh CVE-2018-7749, libssh CVE-2018-10933).

A client skips user authentication and sends CHANNEL_OPEN "session" plus an
``exec`` of ``touch MARKER`` at every point before login (and once after a forged
USERAUTH_SUCCESS of its own). The server must end the connection with
PROTOCOL_ERROR, its handler must never be asked for a channel, and MARKER must not
exist, while the same request from a logged-in user does create it.
"""

from __future__ import annotations

import pytest
import trio

from trioport.errors import DisconnectReason
from trioport.sshproto import messages as m
from trioport.sshproto import wire

from .conftest import TIMEOUT


def exec_payloads(marker: str, channel: int = 0) -> list[bytes]:
    return [
        bytes(m.ChannelOpen("session", channel, 2 * 1024 * 1024, 32768)),
        bytes(m.ChannelRequest(channel, "exec", True, wire.string(f"touch {marker}".encode()))),
    ]


@pytest.mark.parametrize(
    ("position", "forged_success"),
    [
        ("before-kexinit", False),
        ("kex", False),
        ("kex-not-strict", False),
        ("kex-window", False),
        ("service", False),
        ("userauth", False),
        ("userauth", True),
    ],
    ids=[
        "before-kexinit",
        "kex",
        "kex-not-strict",
        "kex-window",
        "service",
        "userauth",
        "userauth-forged-success",
    ],
)
async def test_exec_before_auth_runs_nothing(
    hostile_server, tmp_path, position: str, forged_success: bool
) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto(position)
        payloads = exec_payloads(str(bed.marker))
        if forged_success:
            payloads.insert(0, bytes(m.UserauthSuccess()))
        await peer.send_message(*payloads)
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == DisconnectReason.PROTOCOL_ERROR
        first = payloads[0][0]
        assert f"unexpected message {first} ({m.MsgId(first).name})" in disconnect.description
        # Control: the server does run commands, and waits for them, for the witness.
        control = tmp_path / "CONTROL"
        result = await bed.witness.run(f"touch {control}")
        assert result.exit_status == 0 and control.exists()
        bed.nothing_ran()
        await bed.witness_works()


async def test_exec_after_auth_does_run(hostile_server, keys) -> None:
    # The positive control for the test above: the same exec from a logged-in
    # client creates the marker, so its absence there means the server refused.
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto("connected", keys.mallory)
        await peer.exec(f"touch {bed.marker}".encode())
        assert bed.marker.exists()
        assert bed.handler.opens_by("mallory") == ["session"]


#: One of every connection-protocol message (RFC 4254), numbers 80 to 100.
CONNECTION_MESSAGES = {
    "GLOBAL_REQUEST": m.GlobalRequest("tcpip-forward", True, wire.string("") + wire.uint32(0)),
    "REQUEST_SUCCESS": m.RequestSuccess(),
    "REQUEST_FAILURE": m.RequestFailure(),
    "CHANNEL_OPEN": m.ChannelOpen("direct-tcpip", 0, 1 << 20, 32768),
    "CHANNEL_OPEN_CONFIRMATION": m.ChannelOpenConfirmation(0, 0, 1 << 20, 32768),
    "CHANNEL_OPEN_FAILURE": m.ChannelOpenFailure(0, 1),
    "CHANNEL_WINDOW_ADJUST": m.ChannelWindowAdjust(0, 1),
    "CHANNEL_DATA": m.ChannelData(0, b"x"),
    "CHANNEL_EXTENDED_DATA": m.ChannelExtendedData(0, 1, b"x"),
    "CHANNEL_EOF": m.ChannelEof(0),
    "CHANNEL_CLOSE": m.ChannelClose(0),
    "CHANNEL_REQUEST": m.ChannelRequest(0, "shell", True),
    "CHANNEL_SUCCESS": m.ChannelSuccess(0),
    "CHANNEL_FAILURE": m.ChannelFailure(0),
}


@pytest.mark.parametrize("position", ["kex-window", "service", "userauth"])
@pytest.mark.parametrize("name", list(CONNECTION_MESSAGES))
async def test_connection_protocol_before_login(hostile_server, position: str, name: str):
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto(position)
        payload = bytes(CONNECTION_MESSAGES[name])
        await peer.send_message(payload)
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == DisconnectReason.PROTOCOL_ERROR
        assert f"unexpected message {payload[0]} ({name})" in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()
