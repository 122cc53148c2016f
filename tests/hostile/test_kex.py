"""Hostile key exchanges against a real server: the first exchange must not bend.

Covers: no common algorithm (KEY_EXCHANGE_FAILED), invalid X25519 and ML-KEM public
values, IGNORE before or inside the first exchange under strict KEX (Terrapin,
CVE-2023-48795), and EXT_INFO / SERVICE_REQUEST / USERAUTH_REQUEST before NEWKEYS
(asyncssh CVE-2023-46445 / CVE-2023-46446).
"""

from __future__ import annotations

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from trioport.errors import DisconnectReason
from trioport.sshproto import ConnectionConfig, Role
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m

from .conftest import TIMEOUT
from .peer import kexinit, plain_packet

PROTOCOL_ERROR = DisconnectReason.PROTOCOL_ERROR
KEY_EXCHANGE_FAILED = DisconnectReason.KEY_EXCHANGE_FAILED


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"kex_algorithms": ("diffie-hellman-group1-sha1",)}, "no matching key exchange method"),
        ({"server_host_key_algorithms": ("ssh-dss",)}, "no matching host key type"),
        ({"ciphers_c2s": ("3des-cbc",)}, "no matching cipher"),
        ({"ciphers_s2c": ("arcfour",)}, "no matching cipher"),
        (
            {"ciphers_c2s": ("aes128-ctr",), "macs_c2s": ("hmac-md5",)},
            "no matching MAC",
        ),
        ({"compression_c2s": ("zlib",)}, "no matching compression"),
    ],
    ids=["kex", "host-key", "cipher-c2s", "cipher-s2c", "mac", "compression"],
)
async def test_no_common_algorithm(hostile_server, fields: dict, words: str) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.send_version()
        await peer.send_raw(plain_packet(kexinit(**fields)))
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == KEY_EXCHANGE_FAILED
        assert words in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()


def _x25519_public() -> bytes:
    return x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()


def _mlkem_public() -> bytes:
    return mlkem.MLKEM768PrivateKey.generate().public_key().public_bytes_raw()


def _bad_coefficient(public: bytes) -> bytes:
    # FIPS 203 §7.2: every 12-bit coefficient must be below q = 3329; 0xFFF is not.
    return b"\xff\x0f" + public[2:]


@pytest.mark.parametrize(
    ("method", "value", "words"),
    [
        ("curve25519-sha256", lambda: bytes(32), "all zero"),
        # u = 1 is a point of small order: the shared secret is zero too.
        ("curve25519-sha256", lambda: b"\x01" + bytes(31), "all zero"),
        ("curve25519-sha256", lambda: bytes(31), "X25519 public value is 31 bytes"),
        ("curve25519-sha256", lambda: _x25519_public() + b"\x00", "X25519 public value is 33"),
        ("curve25519-sha256", lambda: b"", "X25519 public value is 0 bytes"),
        (
            "mlkem768x25519-sha256",
            lambda: _bad_coefficient(_mlkem_public()) + _x25519_public(),
            "ML-KEM-768 encapsulation key is invalid",
        ),
        (
            "mlkem768x25519-sha256",
            lambda: b"\xff" * 1184 + _x25519_public(),
            "ML-KEM-768 encapsulation key is invalid",
        ),
        (
            "mlkem768x25519-sha256",
            lambda: _mlkem_public() + _x25519_public()[:31],
            "mlkem768x25519 init is 1215 bytes",
        ),
        ("mlkem768x25519-sha256", lambda: _mlkem_public() + bytes(32), "all zero"),
    ],
    ids=[
        "x25519-zero",
        "x25519-small-order",
        "x25519-short",
        "x25519-long",
        "x25519-empty",
        "mlkem-coefficient",
        "mlkem-all-ff",
        "mlkem-short",
        "mlkem-x25519-zero",
    ],
)
async def test_invalid_public_value(hostile_server, method: str, value, words: str) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer(config=ConnectionConfig(role=Role.CLIENT, kex_algorithms=(method,)))
        await peer.flush()
        # The core queues its own ECDH_INIT once the server's KEXINIT is in: replace it.
        await peer.until(lambda: bool(peer.outbox))
        peer.discard()
        await peer.send_raw(plain_packet(bytes(m.KexEcdhInit(value()))))
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == KEY_EXCHANGE_FAILED
        assert words in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()


async def test_ignore_before_strict_kexinit(hostile_server) -> None:
    # Terrapin: an IGNORE ahead of KEXINIT shifts every later sequence number.
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        version, first_kexinit = peer.split_greeting()
        await peer.send_raw(version + plain_packet(bytes(m.Ignore(b"shift"))) + first_kexinit)
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == PROTOCOL_ERROR
        assert "strict KEX: KEXINIT was not the first packet" in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()


@pytest.mark.parametrize("position", ["kex", "kex-window"])
@pytest.mark.parametrize(
    "payload",
    [bytes(m.Ignore(b"")), bytes(m.Debug(False, "hi")), bytes(m.Unimplemented(3))],
    ids=["IGNORE", "DEBUG", "UNIMPLEMENTED"],
)
async def test_transport_messages_inside_strict_initial_kex(
    hostile_server, position: str, payload: bytes
) -> None:
    # PROTOCOL §1.9: during the initial exchange under strict KEX nothing unexpected
    # may arrive, not even IGNORE. In the kex-window the answer comes encrypted.
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto(position)
        await peer.send_message(payload)
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == PROTOCOL_ERROR
        name = m.MsgId(payload[0]).name
        assert f"unexpected message {payload[0]} ({name}) in state kex" in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()


@pytest.mark.parametrize("position", ["before-kexinit", "kex", "kex-not-strict", "kex-window"])
@pytest.mark.parametrize(
    "payload",
    [
        bytes(m.ExtInfo((("server-sig-algs", b"ssh-rsa"),))),
        bytes(m.ServiceRequest("ssh-userauth")),
        bytes(m.UserauthRequest("mallory", "ssh-connection", "none")),
    ],
    ids=["EXT_INFO", "SERVICE_REQUEST", "USERAUTH_REQUEST"],
)
async def test_higher_layer_message_before_newkeys(
    hostile_server, position: str, payload: bytes
) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto(position)
        await peer.send_message(payload)
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == PROTOCOL_ERROR
        name = m.MsgId(payload[0]).name
        assert f"unexpected message {payload[0]} ({name}) in state kex" in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()


async def test_kex_window_is_encrypted_from_the_server(hostile_server) -> None:
    # The peer really is between the two NEWKEYS: the server's DISCONNECT could only
    # be read with the new keys (and the strict-KEX sequence numbers from zero).
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto("kex-window")
        assert peer.cleartext and not peer.outbox
        await peer.send_message(bytes(m.Ignore(b"")))
        await peer.expect_disconnect()
        assert peer.conn.strict_kex
        kinds = [type(e) for e in peer.events]
        assert kinds.index(ev.KexComplete) < kinds.index(ev.Disconnect)


@pytest.mark.parametrize(
    ("position", "payload", "words"),
    [
        ("before-kexinit", bytes(m.KexEcdhInit(bytes(32))), "unexpected key exchange message 30"),
        ("before-kexinit", bytes(m.NewKeys()), "unexpected key exchange message 21"),
        ("kex", bytes(m.NewKeys()), "unexpected key exchange message 21"),
        ("kex", kexinit(), "KEXINIT during a key exchange"),
        ("kex-window", bytes(m.KexEcdhInit(bytes(32))), "unexpected key exchange message 30"),
        ("kex-window", kexinit(), "KEXINIT during a key exchange"),
        ("connected", bytes(m.NewKeys()), "unexpected key exchange message 21"),
        ("connected", bytes(m.KexEcdhInit(bytes(32))), "unexpected key exchange message 30"),
    ],
    ids=[
        "ECDH_INIT-before-KEXINIT",
        "NEWKEYS-before-KEXINIT",
        "NEWKEYS-before-ECDH_INIT",
        "second-KEXINIT",
        "second-ECDH_INIT",
        "KEXINIT-before-NEWKEYS",
        "NEWKEYS-out-of-the-blue",
        "ECDH_INIT-out-of-the-blue",
    ],
)
async def test_key_exchange_out_of_order(
    hostile_server, keys, position: str, payload: bytes, words: str
) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto(position, keys.mallory)
        await peer.send_message(payload)
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == PROTOCOL_ERROR
        assert words in disconnect.description
        bed.nothing_ran(logged_in=position == "connected")
        await bed.witness_works()
