"""Hostile transport input: version lines and packet framing.

Each case: a real server on loopback, one hostile connection, and a witness client
logged in before the attack. The hostile connection must end with the right
DISCONNECT (in cleartext before NEWKEYS, encrypted after) and the witness must go
on working. Bad lengths are tried before the keys and after them, for every way a
cipher carries the length.
"""

from __future__ import annotations

import pytest
import trio

from trioport.errors import DisconnectReason
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto import messages as m
from trioport.sshproto.config import DEFAULT_MACS

from .conftest import TIMEOUT
from .peer import plain_packet

PROTOCOL_ERROR = DisconnectReason.PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("line", "code", "words"),
    [
        (b"GET / HTTP/1.1\r\n", PROTOCOL_ERROR, "expected an SSH identification line"),
        (b"SSH-2.0-" + b"A" * 300 + b"\r\n", PROTOCOL_ERROR, "longer than 255 bytes"),
        (b"SSH-2.0-" + b"A" * 1000, PROTOCOL_ERROR, "identification line too long"),
        (
            b"SSH-1.5-OpenSSH_1.2.3\r\n",
            DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED,
            "protocol version not supported",
        ),
        (b"SSH-2.0-\x01\x02\r\n", PROTOCOL_ERROR, "not printable"),
    ],
    ids=["junk", "over-255-bytes", "no-end-of-line", "ssh-1.5", "control-characters"],
)
async def test_bad_version_line(hostile_server, line: bytes, code: int, words: str) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        peer.discard()  # the core's own version line and KEXINIT are never sent
        await peer.send_raw(line)
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == code
        assert words in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()


@pytest.mark.parametrize(
    "length", [0, 4, 2**31, 256 * 1024 + 8, 2**32 - 8], ids=["0", "4", "2^31", "256KiB+8", "2^32-8"]
)
async def test_bad_packet_length(hostile_server, length: int) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.send_version()
        # Only the length and a few bytes: the server must refuse without waiting
        # for (or allocating) the rest.
        await peer.send_raw(length.to_bytes(4, "big") + b"\x04" + bytes(11))
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == PROTOCOL_ERROR
        assert f"Bad packet length {length}" in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()


@pytest.mark.parametrize(
    ("packet", "words"),
    [
        # padding_length >= packet_length: it would eat the payload and more.
        (plain_packet(bytes(m.Ignore(b"x" * 6)), padding_length=20), "Corrupted padlen 20"),
        (plain_packet(bytes(m.Ignore(b"x" * 6)), padding_length=255), "Corrupted padlen 255"),
        # RFC 4253 §6: at least four bytes of padding.
        (plain_packet(bytes(m.Ignore(b"x" * 6)), padding_length=3), "Corrupted padlen 3"),
        (plain_packet(bytes(m.Ignore(b"x" * 6)), padding_length=0), "Corrupted padlen 0"),
        # Not a multiple of the block size (8 before NEWKEYS).
        (plain_packet(bytes(m.Ignore(b"x" * 6)), packet_length=17)[:21], "padding error"),
        # Only the padding_length byte and padding: no message number at all.
        ((12).to_bytes(4, "big") + b"\x0b" + bytes(11), "packet without a message number"),
    ],
    ids=["padlen>len", "padlen-255", "padlen-3", "padlen-0", "unaligned", "empty-payload"],
)
async def test_bad_padding(hostile_server, packet: bytes, words: str) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.send_version()
        await peer.send_raw(packet)
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == PROTOCOL_ERROR
        assert words in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()


CIPHER_MODES = [
    ("aes128-gcm@openssh.com", "hmac-sha2-256-etm@openssh.com"),
    ("chacha20-poly1305@openssh.com", "hmac-sha2-256-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes256-ctr", "hmac-sha2-256"),
]


@pytest.mark.parametrize(("cipher", "mac"), CIPHER_MODES)
@pytest.mark.parametrize(
    "length", [0, 4, 2**31, 256 * 1024 + 16], ids=["0", "4", "2^31", "256KiB+16"]
)
async def test_bad_packet_length_after_newkeys(
    hostile_server, keys, cipher: str, mac: str, length: int
) -> None:
    # The same lengths once the keys are in place, for each way the length travels
    # (clear with AES-GCM and ETM, encrypted with chacha20 and plain CTR+HMAC).
    server_config = ConnectionConfig(
        role=Role.SERVER, host_keys=[HostKey(keys.host)], macs=(*DEFAULT_MACS, "hmac-sha2-256")
    )
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server(config=server_config)
        peer = await bed.peer(
            config=ConnectionConfig(role=Role.CLIENT, ciphers=(cipher,), macs=(mac,))
        )
        await peer.goto("userauth")
        assert peer.conn.negotiated["cipher_c2s"] == cipher
        await peer.send_raw(peer.sealed_with_length(length))
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == PROTOCOL_ERROR
        assert f"Bad packet length {length}" in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()


@pytest.mark.parametrize(
    "line",
    [
        b"SSH-2.0-" + b"A" * 245 + b"\r\n",  # 255 bytes with CR LF: the most RFC 4253 allows
        b"SSH-2.0-" + b"A" * 246 + b"\n",  # bare LF is tolerated (RFC 4253 §4.2)
        b"SSH-1.99-OpenSSH_compat\r\n",  # RFC 4253 §5.1: "1.99" means 2.0 too
        b"SSH-2.0-Hostile_1.0 with comments\r\n",
    ],
    ids=["255-bytes", "bare-lf", "ssh-1.99", "comments"],
)
async def test_good_version_line_at_the_limits(hostile_server, keys, line: bytes) -> None:
    # The other side of the version tests: lines at the limits still log in.
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.send_greeting(line)
        await peer.authenticate("mallory", keys.mallory)
        assert await peer.exec(b"echo in") == b"in\n"


async def test_version_line_one_byte_too_long(hostile_server) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.send_greeting(b"SSH-2.0-" + b"A" * 246 + b"\r\n")  # 256 bytes
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == PROTOCOL_ERROR
        assert "longer than 255 bytes" in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()
