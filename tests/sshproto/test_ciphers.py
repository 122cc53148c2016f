"""Packet protection: round trips, tampering, bad lengths, and two independent oracles.

Oracles: asyncssh's packet encryption (a test dependency, used read-only) must produce
the same wire bytes as ours for every cipher and MAC, and a small pure-Python ChaCha20
and Poly1305 (checked against RFC 8439 vectors) rebuilds a chacha20-poly1305@openssh.com
packet from PROTOCOL.chacha20poly1305 alone.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterator

import pytest
from asyncssh import encryption as asyncssh_encryption
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from trioport.errors import (
    DisconnectReason,
    LocalProtocolError,
    MACError,
    RemoteProtocolError,
)
from trioport.sshproto import ciphers
from trioport.sshproto.ciphers import CIPHERS, MACS, MAX_PACKET_SIZE, create, none_protection
from trioport.sshproto.sendqueue import SendQueue

COMBOS = [
    (cipher, mac)
    for cipher, spec in CIPHERS.items()
    for mac in ([None] if spec.aead else list(MACS))
]
IDS = [f"{c}+{m}" if m else c for c, m in COMBOS]


def _counter_rng(seed: int = 0) -> Callable[[int], bytes]:
    """A deterministic rng: SHA-256 in counter mode."""
    state = {"n": 0}

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            state["n"] += 1
            out += hashlib.sha256(b"%d:%d" % (seed, state["n"])).digest()
        return out[:n]

    return rng


def _keys(cipher: str, mac: str | None) -> tuple[bytes, bytes, bytes | None]:
    spec = CIPHERS[cipher]
    key = bytes(range(1, spec.key_size + 1))
    iv = bytes(range(100, 100 + spec.iv_size))
    mac_key = bytes(range(50, 50 + MACS[mac].key_size)) if mac and not spec.aead else None
    return key, iv, mac_key


def _pair(cipher: str, mac: str | None) -> tuple[ciphers.PacketProtection, ...]:
    key, iv, mac_key = _keys(cipher, mac)
    return create(cipher, mac, key, iv, mac_key), create(cipher, mac, key, iv, mac_key)


def _receive(p: ciphers.PacketProtection, seqnr: int, wire: bytes) -> bytes:
    """What a transport does: head, packet_length, then open exactly that many bytes."""
    total = p.packet_length(seqnr, wire[: p.head_size])
    assert total == len(wire)
    return p.open(seqnr, wire)


PAYLOADS = [b"", b"\x05", b"\x15" * 15, b"x" * 16, bytes(range(256)) * 4, b"y" * 32768]


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(("cipher", "mac"), COMBOS, ids=IDS)
def test_round_trip_every_cipher_and_mac(cipher: str, mac: str | None) -> None:
    sender, receiver = _pair(cipher, mac)
    rng = _counter_rng()
    spec = CIPHERS[cipher]
    for seqnr, payload in enumerate(PAYLOADS * 2, start=2**32 - 3):  # crosses the wrap
        wire = sender.seal(seqnr, payload, rng)
        # RFC 4253 §6: >= 4 bytes padding; the aligned part is a multiple of the block.
        mac_size = sender.mac_size
        length = len(wire) - 4 - mac_size
        aligned = length if (spec.aead or (mac and MACS[mac].etm)) else length + 4
        assert aligned % spec.block_size == 0
        assert length - 1 - len(payload) >= 4
        assert payload not in wire or len(payload) < 4  # it is encrypted
        assert _receive(receiver, seqnr, wire) == payload


@pytest.mark.parametrize(("cipher", "mac"), [*COMBOS, ("none", None)], ids=[*IDS, "none"])
def test_sealing_in_two_parts_is_sealing_the_whole_payload(cipher: str, mac: str | None) -> None:
    """Channel data is sealed as header + the application's buffer, straight into the
    send queue: the wire bytes are exactly those of the joined payload."""
    if cipher == "none":
        whole, parts = none_protection(), none_protection()
    else:
        whole, parts = _pair(cipher, mac)
    queue = SendQueue()
    expected = b""
    data = memoryview(bytes(range(256)) * 600)
    for seqnr, (head, body) in enumerate(
        [
            (b"\x5e\x00\x00\x00\x01", data[:100_000]),
            (b"\x61\x00\x00\x00\x01", b""),
            (b"\x5e", data[7:]),
        ]
    ):
        expected += whole.seal(seqnr, head + bytes(body), _counter_rng(seqnr))
        size = parts.seal_into(seqnr, head, body, _counter_rng(seqnr), queue)
        assert len(queue) == len(expected)
        assert size > len(head) + len(body)
    assert bytes(queue.take()) == expected
    assert not queue


def test_none_protection_is_plain_framing() -> None:
    p = none_protection()
    wire = p.seal(0, b"\x14hello", lambda n: b"\xaa" * n)
    # length 12 = 1 + 6 + 5 so that 4 + 12 is a multiple of 8.
    assert wire == bytes.fromhex("0000000c05") + b"\x14hello" + b"\xaa" * 5
    assert (p.head_size, p.mac_size, p.block_size) == (4, 0, 8)
    assert _receive(none_protection(), 0, wire) == b"\x14hello"


def test_cipher_and_mac_tables() -> None:
    assert CIPHERS["chacha20-poly1305@openssh.com"] == ciphers.CipherSpec(64, 0, 8, True)
    assert CIPHERS["aes256-gcm@openssh.com"].iv_size == 12
    assert CIPHERS["aes192-ctr"].key_size == 24
    assert MACS["hmac-sha2-512-etm@openssh.com"] == ciphers.MacSpec(64, 64, True)
    assert set(ciphers.DEFAULT_CIPHERS) <= set(CIPHERS)
    assert set(ciphers.DEFAULT_MACS) <= set(MACS)
    assert not any("sha1" in m for m in ciphers.DEFAULT_MACS)
    assert MAX_PACKET_SIZE == 256 * 1024


# --- oracle: asyncssh ----------------------------------------------------------------


@pytest.mark.parametrize(("cipher", "mac"), COMBOS, ids=IDS)
def test_wire_bytes_match_asyncssh(cipher: str, mac: str | None) -> None:
    key, iv, mac_key = _keys(cipher, mac)
    ours = create(cipher, mac, key, iv, mac_key)
    etm = bool(mac and MACS[mac].etm)
    theirs = asyncssh_encryption.get_encryption(
        cipher.encode(), key, iv, (mac or "").encode(), mac_key or b"", etm
    )
    for seqnr, payload in enumerate(PAYLOADS[:5], start=7):
        pad_bytes: list[bytes] = []

        def rng(n: int, pad_bytes: list[bytes] = pad_bytes) -> bytes:
            pad_bytes.append(bytes((0x30 + n,)) * n)
            return pad_bytes[-1]

        wire = ours.seal(seqnr, payload, rng)
        pad = pad_bytes[-1]
        header = struct.pack(">I", 1 + len(payload) + len(pad))
        body, tag = theirs.encrypt_packet(seqnr, header, bytes((len(pad),)) + payload + pad)
        assert wire == body + tag


@pytest.mark.parametrize(("cipher", "mac"), COMBOS, ids=IDS)
def test_asyncssh_packets_open(cipher: str, mac: str | None) -> None:
    key, iv, mac_key = _keys(cipher, mac)
    etm = bool(mac and MACS[mac].etm)
    theirs = asyncssh_encryption.get_encryption(
        cipher.encode(), key, iv, (mac or "").encode(), mac_key or b"", etm
    )
    ours = create(cipher, mac, key, iv, mac_key)
    block = CIPHERS[cipher].block_size
    for seqnr, payload in enumerate(PAYLOADS[:5]):
        extra = 0 if (CIPHERS[cipher].aead or etm) else 4
        pad = -(extra + 1 + len(payload)) % block
        pad += block if pad < 4 else 0
        body, tag = theirs.encrypt_packet(
            seqnr,
            struct.pack(">I", 1 + len(payload) + pad),
            bytes((pad,)) + payload + b"\x00" * pad,
        )
        assert _receive(ours, seqnr, body + tag) == payload


# --- oracle: chacha20-poly1305 from the spec alone -----------------------------------


def _rotl(v: int, c: int) -> int:
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def _chacha_block(key: bytes, counter: int, nonce8: bytes) -> bytes:
    """The original ChaCha20 block: 64-bit counter, 64-bit nonce (djb layout)."""
    const = struct.unpack("<4I", b"expand 32-byte k")
    state = [
        *const,
        *struct.unpack("<8I", key),
        counter & 0xFFFFFFFF,
        counter >> 32,
        *struct.unpack("<2I", nonce8),
    ]
    x = list(state)

    def qr(a: int, b: int, c: int, d: int) -> None:
        x[a] = (x[a] + x[b]) & 0xFFFFFFFF
        x[d] = _rotl(x[d] ^ x[a], 16)
        x[c] = (x[c] + x[d]) & 0xFFFFFFFF
        x[b] = _rotl(x[b] ^ x[c], 12)
        x[a] = (x[a] + x[b]) & 0xFFFFFFFF
        x[d] = _rotl(x[d] ^ x[a], 8)
        x[c] = (x[c] + x[d]) & 0xFFFFFFFF
        x[b] = _rotl(x[b] ^ x[c], 7)

    for _ in range(10):
        qr(0, 4, 8, 12), qr(1, 5, 9, 13), qr(2, 6, 10, 14), qr(3, 7, 11, 15)
        qr(0, 5, 10, 15), qr(1, 6, 11, 12), qr(2, 7, 8, 13), qr(3, 4, 9, 14)
    return struct.pack("<16I", *((a + b) & 0xFFFFFFFF for a, b in zip(x, state)))


def _chacha_xor(key: bytes, counter: int, nonce8: bytes, data: bytes) -> bytes:
    stream = b"".join(
        _chacha_block(key, counter + i, nonce8) for i in range((len(data) + 63) // 64)
    )
    return bytes(a ^ b for a, b in zip(data, stream))


def _poly1305(key: bytes, msg: bytes) -> bytes:
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:], "little")
    p = (1 << 130) - 5
    acc = 0
    for i in range(0, len(msg), 16):
        chunk = msg[i : i + 16] + b"\x01"
        acc = (acc + int.from_bytes(chunk, "little")) * r % p
    return ((acc + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def test_reference_chacha_and_poly1305_match_rfc_8439() -> None:
    # RFC 8439 §2.6.2: Poly1305 key generation; its 96-bit nonce 00000000 0001020304050607
    # is, in the 64/64 layout, a zero high counter word and nonce 0001020304050607.
    key = bytes(range(0x80, 0xA0))
    block = _chacha_block(key, 0, bytes.fromhex("0001020304050607"))
    assert block[:32].hex() == ("8ad5a08b905f81cc815040274ab29471a833b637e3fd0da508dbb8e2fdd1a646")
    # RFC 8439 §2.5.2: Poly1305 tag.
    poly_key = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    tag = _poly1305(poly_key, b"Cryptographic Forum Research Group")
    assert tag.hex() == "a8061dc1305136c6c22b8baf0c0127a9"


@pytest.mark.parametrize("seqnr", [0, 1, 0x01020304, 2**32 - 1])
def test_chacha20_poly1305_matches_spec_reference(seqnr: int) -> None:
    key = bytes(range(64))
    k2, k1 = key[:32], key[32:]  # "The first 256 bits constitute K_2"
    payload = b"\x5e" + bytes(range(100))
    wire = create("chacha20-poly1305@openssh.com", None, key, b"", None).seal(
        seqnr, payload, lambda n: b"\xee" * n
    )
    pad = -(1 + len(payload)) % 8
    pad += 8 if pad < 4 else 0
    nonce = struct.pack(">Q", seqnr)
    head = _chacha_xor(k1, 0, nonce, struct.pack(">I", 1 + len(payload) + pad))
    body = _chacha_xor(k2, 1, nonce, bytes((pad,)) + payload + b"\xee" * pad)
    tag = _poly1305(_chacha_block(k2, 0, nonce)[:32], head + body)
    assert wire == head + body + tag


# --- tampering -----------------------------------------------------------------------


def _flips(wire: bytes) -> Iterator[tuple[int, bytes]]:
    for bit in range(len(wire) * 8):
        flipped = bytearray(wire)
        flipped[bit // 8] ^= 1 << (bit % 8)
        yield bit, bytes(flipped)


@pytest.mark.parametrize(("cipher", "mac"), COMBOS, ids=IDS)
def test_every_bit_flip_is_detected(cipher: str, mac: str | None) -> None:
    key, iv, mac_key = _keys(cipher, mac)
    seqnr = 3
    wire = create(cipher, mac, key, iv, mac_key).seal(seqnr, b"\x5eflip me", _counter_rng())
    for bit, flipped in _flips(wire):
        receiver = create(cipher, mac, key, iv, mac_key)
        try:
            total = receiver.packet_length(seqnr, flipped[: receiver.head_size])
        except RemoteProtocolError as exc:
            assert not isinstance(exc, MACError)
            assert exc.code == DisconnectReason.PROTOCOL_ERROR
            continue
        # A changed length means the transport reads a different amount.
        data = flipped[:total].ljust(total, b"\x00")
        with pytest.raises(RemoteProtocolError) as info:
            receiver.open(seqnr, data)
        if total == len(wire):
            assert isinstance(info.value, MACError), bit
            assert info.value.code == DisconnectReason.MAC_ERROR
            assert "Corrupted MAC" in info.value.description


@pytest.mark.parametrize(("cipher", "mac"), COMBOS, ids=IDS)
def test_wrong_sequence_number_is_a_mac_error(cipher: str, mac: str | None) -> None:
    if CIPHERS[cipher].aead and cipher != "chacha20-poly1305@openssh.com":
        # AES-GCM does not use the sequence number; it uses its own invocation counter
        # (RFC 5647 §7.1), so a skipped or replayed packet is caught instead.
        sender, receiver = _pair(cipher, mac)
        first = sender.seal(0, b"\x5eone", _counter_rng())
        second = sender.seal(1, b"\x5etwo", _counter_rng())
        with pytest.raises(MACError):
            _receive(receiver, 1, second)  # the first was dropped
        sender, receiver = _pair(cipher, mac)
        first = sender.seal(0, b"\x5eone", _counter_rng())
        assert _receive(receiver, 0, first) == b"\x5eone"
        with pytest.raises(MACError):
            _receive(receiver, 1, first)  # replayed
        return
    for wrong in [5, 3, 2**31 + 4]:
        sender, receiver = _pair(cipher, mac)
        wire = sender.seal(4, b"\x5esequenced", _counter_rng())
        with pytest.raises(RemoteProtocolError) as info:
            _receive(receiver, wrong, wire)
        # chacha decrypts the length with the wrong nonce: bad length or bad MAC.
        if cipher != "chacha20-poly1305@openssh.com":
            assert isinstance(info.value, MACError)


def test_sequence_number_wraps_at_2_32() -> None:
    for cipher, mac in [("chacha20-poly1305@openssh.com", None), ("aes128-ctr", "hmac-sha2-256")]:
        sender, receiver = _pair(cipher, mac)
        wire = sender.seal(2**32 + 9, b"\x5ewrapped", _counter_rng())
        assert _receive(receiver, 9, wire) == b"\x5ewrapped"


# --- lengths and padding -------------------------------------------------------------


def _forged(cipher: str, length: int) -> bytes:
    """A head whose (decrypted) packet_length field is ``length``, at seqnr 0."""
    key, iv, _ = _keys(cipher, None)
    if cipher == "chacha20-poly1305@openssh.com":
        stream = Cipher(algorithms.ChaCha20(key[32:], bytes(8) + bytes(8)), None).encryptor()
        return stream.update(struct.pack(">I", length))
    if cipher.endswith("-ctr"):
        stream = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        return stream.update(struct.pack(">I", length) + bytes(12))
    return struct.pack(">I", length) + bytes(12)


BAD_LENGTHS = [0, 1, 4, 2**31, 2**32 - 1, MAX_PACKET_SIZE + 16, MAX_PACKET_SIZE + 8]
LENGTH_CASES = [
    ("aes128-gcm@openssh.com", None),
    ("chacha20-poly1305@openssh.com", None),
    ("aes256-ctr", "hmac-sha2-256"),
    ("aes256-ctr", "hmac-sha2-256-etm@openssh.com"),
]


@pytest.mark.parametrize(("cipher", "mac"), LENGTH_CASES)
@pytest.mark.parametrize("length", BAD_LENGTHS)
def test_bad_packet_lengths_are_protocol_errors(cipher: str, mac: str | None, length: int) -> None:
    key, iv, mac_key = _keys(cipher, mac)
    receiver = create(cipher, mac, key, iv, mac_key)
    with pytest.raises(RemoteProtocolError, match=r"Bad packet length|padding error") as info:
        receiver.packet_length(0, _forged(cipher, length))
    assert info.value.code == DisconnectReason.PROTOCOL_ERROR
    assert not isinstance(info.value, MACError)


@pytest.mark.parametrize("length", [0, 4, 7, 2**31, MAX_PACKET_SIZE + 4])
def test_bad_lengths_before_newkeys(length: int) -> None:
    with pytest.raises(RemoteProtocolError, match=r"Bad packet length|padding error"):
        none_protection().packet_length(0, struct.pack(">I", length))


def test_largest_packet_is_accepted_and_larger_payloads_refused() -> None:
    sender, receiver = _pair("aes128-gcm@openssh.com", None)
    payload = b"z" * (MAX_PACKET_SIZE - 16)  # 1 + payload + 15 padding = MAX_PACKET_SIZE
    wire = sender.seal(0, payload, _counter_rng())
    assert len(wire) == 4 + MAX_PACKET_SIZE + 16
    assert _receive(receiver, 0, wire) == payload
    with pytest.raises(LocalProtocolError):
        sender.seal(1, b"z" * MAX_PACKET_SIZE, _counter_rng())


def test_bad_padding_length_is_refused_after_the_mac_passes() -> None:
    # Build packets whose MAC is valid but whose padding_length is wrong.
    key, iv, mac_key = _keys("aes128-ctr", "hmac-sha2-256-etm@openssh.com")
    for pad in [0, 3, 16, 255]:
        plain = bytes((pad,)) + b"\x5e" * 15
        ct = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(plain)
        head = struct.pack(">I", 16)
        tag = hmac.digest(mac_key or b"", struct.pack(">I", 0) + head + ct, "sha256")
        receiver = create("aes128-ctr", "hmac-sha2-256-etm@openssh.com", key, iv, mac_key)
        with pytest.raises(RemoteProtocolError, match="padlen") as info:
            _receive(receiver, 0, head + ct + tag)
        assert not isinstance(info.value, MACError)
    for pad in [2, 12, 200]:  # plain framing: same checks
        wire = struct.pack(">I", 12) + bytes((pad,)) + b"\x00" * 11
        with pytest.raises(RemoteProtocolError, match="padlen"):
            _receive(none_protection(), 0, wire)


def test_open_needs_the_announced_size() -> None:
    sender, receiver = _pair("aes128-ctr", "hmac-sha2-256")
    wire = sender.seal(0, b"\x5e", _counter_rng())
    with pytest.raises(LocalProtocolError):
        receiver.open(0, wire)  # packet_length() not called
    receiver.packet_length(0, wire[:16])
    with pytest.raises(LocalProtocolError):
        receiver.open(0, wire[:-1])


def test_create_refuses_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        create("3des-cbc", "hmac-sha1", b"k" * 24, b"i" * 8, b"m" * 20)
    with pytest.raises(LocalProtocolError):
        create("aes128-ctr", None, b"k" * 16, b"i" * 16, None)
    with pytest.raises(LocalProtocolError):
        create("aes128-ctr", "hmac-md5", b"k" * 16, b"i" * 16, b"m" * 16)
    with pytest.raises(LocalProtocolError):
        create("aes128-ctr", "hmac-sha2-256", b"k" * 16, b"i" * 16, b"m" * 31)
    with pytest.raises(LocalProtocolError):
        create("aes256-gcm@openssh.com", None, b"k" * 16, b"i" * 12, None)
    with pytest.raises(LocalProtocolError):
        create("chacha20-poly1305@openssh.com", None, b"k" * 32, b"", None)
    # AEAD ciphers ignore the MAC arguments.
    create("aes128-gcm@openssh.com", "hmac-sha2-256", b"k" * 16, b"i" * 12, b"m" * 32)


@given(
    st.sampled_from(COMBOS),
    st.lists(st.binary(max_size=600), min_size=1, max_size=6),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_stream_of_packets_round_trips(
    combo: tuple[str, str | None], payloads: list[bytes], start: int
) -> None:
    sender, receiver = _pair(*combo)
    rng = _counter_rng(start)
    stream = b"".join(sender.seal(start + i, p, rng) for i, p in enumerate(payloads))
    # Parse the concatenated stream as a transport would.
    pos = 0
    for i, payload in enumerate(payloads):
        total = receiver.packet_length(start + i, stream[pos : pos + receiver.head_size])
        assert receiver.open(start + i, stream[pos : pos + total]) == payload
        pos += total
    assert pos == len(stream)
