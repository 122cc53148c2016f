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
