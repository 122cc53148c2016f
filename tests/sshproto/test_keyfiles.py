"""Key files: openssh-key-v1 (plain and bcrypt-encrypted), PEM/PKCS#8, public key files.

The fixtures in tests/data/keys were written by OpenSSH 9.2's ssh-keygen;
``cryptography``'s own OpenSSH reader and writer serve as a second, independent
implementation to cross-check ours.
"""

from __future__ import annotations

import base64
import itertools
import pathlib
import random

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from trioport.errors import DecodeError, KeyFormatError
from trioport.sshproto.certs import CertType, sign_certificate
from trioport.sshproto.keyfiles import (
    decode_private_key,
    dump_private_key,
    dump_public_key,
    encode_private_key,
    fingerprint_line,
    is_encrypted,
    key_bits,
    load_private_key,
    load_private_key_and_comment,
    load_public_key_file,
)
from trioport.sshproto.keys import PrivateKey
from trioport.sshproto.wire import Reader, string, uint32

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "keys"
FIXTURES = {
    "ed25519": ("ED25519", 256),
    "rsa2048": ("RSA", 2048),
    "ecdsa256": ("ECDSA", 256),
    "ecdsa384": ("ECDSA", 384),
    "ecdsa521": ("ECDSA", 521),
}


def _rng(seed: int = 0):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def _fixture(name: str) -> PrivateKey:
    return load_private_key((DATA / name).read_bytes())


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_reads_ssh_keygen_files_with_their_comment(name) -> None:
    key, comment = load_private_key_and_comment((DATA / name).read_bytes())
    public, public_comment = load_public_key_file((DATA / f"{name}.pub").read_bytes())
    assert key.public == public
    assert comment == public_comment
    assert not is_encrypted((DATA / name).read_bytes())


def test_reads_passphrase_protected_ssh_keygen_file() -> None:
    data = (DATA / "ed25519_encrypted").read_bytes()
    assert is_encrypted(data)
    key = load_private_key(data, "hunter2")
    assert key.public == load_public_key_file((DATA / "ed25519_encrypted.pub").read_text())[0]
    assert load_private_key(data, b"hunter2").public == key.public
    with pytest.raises(KeyFormatError, match=r"^wrong passphrase or corrupt key$"):
        load_private_key(data, "hunter3")
    with pytest.raises(KeyFormatError, match="a passphrase is required"):
        load_private_key(data)


@pytest.mark.parametrize("name", sorted(FIXTURES))
@pytest.mark.parametrize("passphrase", [None, "correct horse"])
def test_dump_load_round_trip_and_cross_check_with_cryptography(name, passphrase) -> None:
    key = _fixture(name)
    data = dump_private_key(key, passphrase, "me@host", rng=_rng(), rounds=2)
    assert data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert all(len(line) <= 70 for line in data.splitlines())
    assert is_encrypted(data) is (passphrase is not None)
    again, comment = load_private_key_and_comment(data, passphrase)
    assert again.public == key.public and comment == "me@host"
    # cryptography's independent reader agrees, and we read its writer's output.
    pw = passphrase.encode() if passphrase else None
    assert PrivateKey.from_openssh(data, pw).public == key.public
    if passphrase is None or name == "ed25519":  # bcrypt at 16 rounds is slow
        assert load_private_key(key.to_openssh(pw), passphrase).public == key.public
    sig = again.sign(b"x")
    assert key.public.verify(sig, b"x")


def test_output_is_deterministic_for_a_fixed_rng_and_salted_per_call() -> None:
    key = _fixture("ed25519")
    one = dump_private_key(key, "pw", rng=_rng(1), rounds=1)
    assert one == dump_private_key(key, "pw", rng=_rng(1), rounds=1)
    assert one != dump_private_key(key, "pw", rng=_rng(2), rounds=1)
    assert dump_private_key(key) == dump_private_key(key)


def test_encrypting_needs_an_rng_and_an_empty_passphrase_means_none() -> None:
    key = _fixture("ed25519")
    with pytest.raises(KeyFormatError, match="rng"):
        dump_private_key(key, "pw")
    assert not is_encrypted(dump_private_key(key, ""))
    with pytest.raises(KeyFormatError, match="unknown private key format"):
        dump_private_key(key, format="der")


@pytest.mark.parametrize("passphrase", [None, "pkcs8 pass"])
def test_pkcs8_and_traditional_pem(passphrase) -> None:
    key = _fixture("ecdsa256")
    data = dump_private_key(key, passphrase, format="pkcs8")
    assert b"PRIVATE KEY-----" in data
    assert is_encrypted(data) is (passphrase is not None)
    assert load_private_key(data, passphrase).public == key.public
    if passphrase:
        with pytest.raises(KeyFormatError, match=r"^wrong passphrase or corrupt key$"):
            load_private_key(data, "nope")
        with pytest.raises(KeyFormatError, match="a passphrase is required"):
            load_private_key(data)
    else:  # a passphrase given for an unencrypted file is ignored, as in OpenSSH
        assert load_private_key(data, "unused").public == key.public
    rsa_key = _fixture("rsa2048")
    traditional = rsa_key.to_cryptography().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert traditional.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert load_private_key(traditional).public == rsa_key.public


def test_rsa_below_2048_bits_is_refused_with_a_clear_message() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    for fmt in (serialization.PrivateFormat.OpenSSH, serialization.PrivateFormat.PKCS8):
        data = weak.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
        with pytest.raises(KeyFormatError, match="RSA key of 1024 bits is too small"):
            load_private_key(data)


def _rebuild(data: bytes, **fields) -> bytes:
    """Re-armour an openssh-key-v1 file with some outer fields replaced."""
    text = data.decode()
    body = "".join(text.strip().splitlines()[1:-1])
    reader = Reader(base64.b64decode(body)[len(b"openssh-key-v1\x00") :])
    parts = {
        "cipher": reader.string(),
        "kdf": reader.string(),
        "kdf_options": reader.string(),
        "nkeys": reader.uint32(),
        "public": reader.string(),
        "section": reader.string(),
    }
    parts.update(fields)
    raw = b"openssh-key-v1\x00" + b"".join(
        [
            string(parts["cipher"]),
            string(parts["kdf"]),
            string(parts["kdf_options"]),
            uint32(parts["nkeys"]),
            string(parts["public"]),
            string(parts["section"]),
        ]
    )
    armoured = base64.b64encode(raw).decode()
    return (
        "-----BEGIN OPENSSH PRIVATE KEY-----\n" + armoured + "\n-----END OPENSSH PRIVATE KEY-----\n"
    ).encode()


def test_corrupt_files_are_refused_with_reasons() -> None:
    key = _fixture("ed25519")
    plain = dump_private_key(key, comment="c")
    encrypted = dump_private_key(key, "pw", rng=_rng(), rounds=1)
    other = _fixture("ecdsa256").public.blob
    cases = [
        (_rebuild(plain, public=other), "public and private halves differ"),
        (_rebuild(plain, nkeys=2), "holds 2 keys"),
        (_rebuild(plain, cipher=b"3des-cbc"), "unsupported key file cipher"),
        (_rebuild(plain, kdf=b"bcrypt"), "unencrypted key file names a KDF"),
        (_rebuild(encrypted, kdf=b"scrypt"), "unsupported key file KDF"),
        (_rebuild(plain, section=b"\x00" * 7), "whole number of cipher blocks"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\n!!\n-----END OPENSSH PRIVATE KEY-----", "base64"),
        (b"hello", "not a private key file"),
    ]
    for data, reason in cases:
        with pytest.raises(KeyFormatError, match=reason):
            load_private_key(data, "pw")
    # A flipped bit in the encrypted section reads as a wrong passphrase.
    section = Reader(base64.b64decode("".join(encrypted.decode().splitlines()[1:-1]))[15:])
    fields = [section.string(), section.string(), section.string(), section.uint32()]
    section.string()
    body = bytearray(section.string())
    body[3] ^= 0x80
    with pytest.raises(KeyFormatError, match=r"^wrong passphrase or corrupt key$"):
        load_private_key(_rebuild(encrypted, section=bytes(body)), "pw")
    assert fields[0] == b"aes256-ctr" and fields[1] == b"bcrypt"


def test_kdf_rounds_are_capped() -> None:
    data = dump_private_key(_fixture("ed25519"), "pw", rng=_rng(), rounds=9)
    with pytest.raises(KeyFormatError, match="asks for 9 bcrypt rounds; at most 8"):
        load_private_key(data, "pw", max_kdf_rounds=8)
    assert load_private_key(data, "pw").public == _fixture("ed25519").public


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fingerprint_lines_look_like_ssh_keygen_l(name) -> None:
    public, comment = load_public_key_file((DATA / f"{name}.pub").read_text())
    label, bits = FIXTURES[name]
    expected_fp = (DATA / f"{name}.fingerprint").read_text().split()[0]
    assert key_bits(public) == bits
    assert fingerprint_line(public, comment) == f"{bits} {expected_fp} {comment} ({label})"
    assert fingerprint_line(public).endswith(" no comment (" + label + ")")


def test_certificate_public_files_and_fingerprints() -> None:
    ca, user = _fixture("ed25519"), _fixture("ecdsa384")
    cert = sign_certificate(
        ca,
        user.public,
        cert_type=CertType.USER,
        key_id="u",
        principals=["u"],
        valid_after=0,
        valid_before=2**40,
        nonce=bytes(16),
    )
    data = dump_public_key(cert, "u@h")
    assert load_public_key_file(data) == (cert, "u@h")
    assert fingerprint_line(cert, "u@h") == f"384 {user.public.fingerprint()} u@h (ECDSA-CERT)"
    with pytest.raises(KeyFormatError, match="no public key"):
        load_public_key_file("# nothing\n\n")
    with pytest.raises(KeyFormatError, match="newline"):
        dump_public_key(cert, "a\nb")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_private_field_codec_round_trips_plain_and_certificate_forms(name) -> None:
    key = _fixture(name)
    reader = Reader(encode_private_key(key))
    again, cert = decode_private_key(reader)
    assert reader.remaining == 0 and cert is None and again.public == key.public
    certificate = sign_certificate(
        _fixture("ed25519"),
        key.public,
        cert_type=CertType.USER,
        key_id="x",
        principals=["x"],
        valid_after=0,
        valid_before=2**40,
        nonce=bytes(16),
    )
    reader = Reader(encode_private_key(key, certificate) + b"tail")
    again, cert = decode_private_key(reader)
    assert cert == certificate and again.public == key.public
    assert reader.rest() == b"tail"
    with pytest.raises(KeyFormatError, match="different key"):
        encode_private_key(_fixture("ecdsa521" if name != "ecdsa521" else "ed25519"), certificate)


def test_private_codec_refuses_mismatched_halves() -> None:
    ed, ec = _fixture("ed25519"), _fixture("ecdsa256")
    blob = bytearray(encode_private_key(ed))
    blob[-1] ^= 1  # the public copy inside k || ENC(A)
    with pytest.raises(DecodeError, match="malformed ssh-ed25519"):
        decode_private_key(Reader(bytes(blob)))
    # An ECDSA public point with another key's scalar.
    reader = Reader(encode_private_key(ec))
    head = string(reader.string()) + string(reader.string()) + string(reader.string())
    other = Reader(encode_private_key(PrivateKey.generate("ecdsa-sha2-nistp256")))
    for _ in range(3):
        other.string()
    with pytest.raises(DecodeError, match="does not match its public key"):
        decode_private_key(Reader(head + other.rest()))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_our_errors(data) -> None:
    try:
        decode_private_key(Reader(data))
    except DecodeError:
        pass
    armoured = b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.b64encode(
        b"openssh-key-v1\x00" + data
    )
    for blob in (data, armoured + b"\n-----END OPENSSH PRIVATE KEY-----\n"):
        try:
            load_private_key(blob, "pw", max_kdf_rounds=2)
        except KeyFormatError:
            pass


def test_every_bit_flip_of_an_unencrypted_file_is_refused_or_harmless() -> None:
    data = dump_private_key(_fixture("ecdsa256"), comment="x")
    raw = base64.b64decode("".join(data.decode().splitlines()[1:-1]))
    for i, bit in itertools.product(range(len(raw)), (0, 7)):
        mutated = bytearray(raw)
        mutated[i] ^= 1 << bit
        armoured = b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.b64encode(bytes(mutated))
        try:
            key = load_private_key(armoured + b"\n-----END OPENSSH PRIVATE KEY-----\n")
        except KeyFormatError:
            continue
        # Only the comment or the check integers can change without refusal.
        assert key.public == _fixture("ecdsa256").public


@pytest.mark.parametrize("name", ["pkcs8_pbkdf2_2e31_iterations", "pkcs8_scrypt_unallocatable"])
def test_costly_pkcs8_key_derivation_is_refused_before_it_runs(name: str) -> None:
    # Found by fuzz/fuzz_keyfiles.py: 2**31 PBKDF2 rounds took minutes of CPU, and an
    # unallocatable scrypt N escaped as cryptography's InternalError.
    corpus = pathlib.Path(__file__).resolve().parents[2] / "fuzz" / "corpus" / "keyfiles"
    data = (corpus / f"fixed-{name}").read_bytes()
    with pytest.raises(KeyFormatError, match=r"asks for too much|derivation rounds"):
        load_private_key(data, b"any passphrase")
