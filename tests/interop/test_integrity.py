"""Tampering is detected: one flipped byte after the key exchange ends the connection.

For every cipher and MAC that trioport and OpenSSH share, a relay flips one byte in
the middle of a transfer, in each direction. The side that receives it must fail
with a MAC/AEAD error (or, for encrypted lengths, a length error), never deliver
the corrupted bytes, and the server must go on serving other connections.
"""

from __future__ import annotations

import os

import pytest
import trio

from .conftest import ssh_command
from .relay import Corruption, relay
from .test_ssh_to_trioport import CIPHER_MAC_PAIRS, everything_enabled

pytestmark = pytest.mark.interop

#: What OpenSSH says when it catches a tampered packet (packet.c, cipher.c).
OPENSSH_TAMPER_MESSAGES = (
    b"message authentication code incorrect",
    b"Corrupted MAC on input",
    b"Bad packet length",
    b"padding error",
    b"Packet corrupt",
)


@pytest.mark.parametrize(("cipher", "mac"), CIPHER_MAC_PAIRS)
@pytest.mark.parametrize("direction", ["c2s", "s2c"])
async def test_flipped_byte_is_caught(
    trioport_server, server_host_key, user_key, nursery, cipher, mac, direction
) -> None:
    server = await trioport_server(config=everything_enabled(server_host_key))
    corruption = Corruption(direction, offset=400_000)
    port = await nursery.start(relay, server.port, corruption)
    data = os.urandom(1_000_000)
    command = "sha256sum" if direction == "c2s" else "head -c 1000000 /dev/zero; echo done"
    with trio.fail_after(60):
        result = await trio.run_process(
            ssh_command(
                port,
                user_key.path,
                command,
                options={"Ciphers": cipher, "MACs": mac, "LogLevel": "INFO"},
            ),
            stdin=data if direction == "c2s" else b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert corruption.done
    assert result.returncode == 255, result.stderr
    assert b"done" not in result.stdout
    assert len(result.stdout) < 1_000_000 or direction == "c2s"
    # Either ssh caught it (s2c), or our server did and said why in its DISCONNECT.
    assert any(m in result.stderr for m in OPENSSH_TAMPER_MESSAGES), result.stderr
    if direction == "c2s":
        # Our server's DISCONNECT carries SSH_DISCONNECT_MAC_ERROR (5) and the reason.
        assert b":5: Corrupted MAC on input" in result.stderr, result.stderr
    # The server is unharmed: a clean connection still works.
    with trio.fail_after(30):
        again = await trio.run_process(
            ssh_command(server.port, user_key.path, "echo fine"), capture_stdout=True
        )
    assert again.stdout == b"fine\n"
