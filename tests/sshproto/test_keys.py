"""Public keys, private keys and signatures against OpenSSH-made fixtures.

The files in tests/data/keys/ were made once with OpenSSH 9.2's ssh-keygen: key pairs,
their ``ssh-keygen -l`` fingerprints, and ``ssh-keygen -Y sign`` signatures
(PROTOCOL.sshsig) over message.txt, whose inner signature blob is an ordinary SSH
signature that our verify() must accept.
"""

from __future__ import annotations

import base64
import hashlib
import pathlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from trioport.errors import DecodeError, KeyFormatError, LocalProtocolError
from trioport.sshproto import keys, wire
from trioport.sshproto.keys import (
    HOST_KEY_ALGORITHMS,
    PrivateKey,
    PublicKey,
    parse_public_key,
    public_key_from_line,
    register_key_type,
    signature_algorithm_for,
)

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "keys"
FIXTURES = ["ed25519", "rsa2048", "ecdsa256", "ecdsa384", "ecdsa521"]
KEY_TYPES = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
]


def _private(name: str) -> PrivateKey:
    return PrivateKey.from_openssh((DATA / name).read_bytes())


def _public(name: str) -> PublicKey:
    return public_key_from_line((DATA / f"{name}.pub").read_text())


_GENERATED: dict[str, PrivateKey] = {}


def _generated(key_type: str) -> PrivateKey:
    # RSA generation is slow; one key per type per test run.
    if key_type not in _GENERATED:
        _GENERATED[key_type] = PrivateKey.generate(key_type, bits=2048)
    return _GENERATED[key_type]


def _sshsig(name: str) -> tuple[bytes, bytes, bytes]:
    """(public blob, signature blob, signed data) from an ``ssh-keygen -Y sign`` file."""
    text = (DATA / f"{name}.sshsig").read_text().splitlines()
    raw = base64.b64decode("".join(line for line in text if not line.startswith("-----")))
    assert raw[:6] == b"SSHSIG"
    r = wire.Reader(raw, 6)
    assert r.uint32() == 1
    public_blob, namespace, reserved, hash_alg, signature = (r.string() for _ in range(5))
    r.end()
    digest = hashlib.new(hash_alg.decode(), (DATA / "message.txt").read_bytes()).digest()
    signed = (
        b"SSHSIG"
        + wire.string(namespace)
        + wire.string(reserved)
        + wire.string(hash_alg)
        + wire.string(digest)
    )
    return public_blob, signature, signed


# --- parsing and formats -------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_openssh_public_key_lines_parse_and_round_trip(name: str) -> None:
    line = (DATA / f"{name}.pub").read_text().strip()
    key = public_key_from_line(line)
    type_, b64, comment = line.split(" ", 2)
    assert key.key_type == type_
    assert key.blob == base64.b64decode(b64)
    assert key.openssh_line(comment) == line
    assert parse_public_key(key.blob) == key


@pytest.mark.parametrize("name", FIXTURES)
def test_fingerprint_matches_ssh_keygen(name: str) -> None:
    assert _public(name).fingerprint() == (DATA / f"{name}.fingerprint").read_text().strip()


@pytest.mark.parametrize("name", FIXTURES)
def test_openssh_private_key_files_load_and_match_their_public_key(name: str) -> None:
    private = _private(name)
    assert private.public == _public(name)
    reloaded = PrivateKey.from_openssh(private.to_openssh())
    assert reloaded.public == private.public


def test_encrypted_private_key_needs_the_right_password() -> None:
    data = (DATA / "ed25519_encrypted").read_bytes()
    key = PrivateKey.from_openssh(data, b"hunter2")
    assert key.public == _public("ed25519_encrypted")
    with pytest.raises(KeyFormatError):
        PrivateKey.from_openssh(data, b"wrong")
    with pytest.raises(KeyFormatError):
        PrivateKey.from_openssh(data)
    with pytest.raises(KeyFormatError):
        PrivateKey.from_openssh(b"not a key")
    encrypted = key.to_openssh(b"s3cret")
    assert PrivateKey.from_openssh(encrypted, b"s3cret").public == key.public


def test_weak_rsa_key_is_refused() -> None:
    line = (DATA / "rsa1024.pub").read_text()
    blob = base64.b64decode(line.split()[1])
    with pytest.raises(DecodeError, match="1024 bits"):
        parse_public_key(blob)
    with pytest.raises(KeyFormatError, match="1024 bits"):
        public_key_from_line(line)
    with pytest.raises(KeyFormatError):
        PrivateKey.generate("ssh-rsa", bits=1024)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(KeyFormatError):
        PrivateKey.from_cryptography(small)


def test_public_keys_compare_and_hash_by_blob() -> None:
    a = _public("ed25519")
    b = parse_public_key(a.blob)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != _public("ecdsa256")
    assert a != "not a key"


def _ed25519_blob(raw: bytes) -> bytes:
    return wire.string("ssh-ed25519") + wire.string(raw)


BAD_BLOBS = {
    "empty": b"",
    "unknown type": wire.string("ssh-dss") + wire.string(b"x" * 32),
    "non-ascii type": wire.string(b"\xff\xfe") + wire.string(b"x"),
    "ed25519 short": _ed25519_blob(b"\x01" * 31),
    "ed25519 long": _ed25519_blob(b"\x01" * 33),
    "ed25519 trailing": _ed25519_blob(b"\x01" * 32) + b"\x00",
    "ed25519 truncated": _ed25519_blob(b"\x01" * 32)[:-1],
    "rsa negative n": wire.string("ssh-rsa") + wire.mpint(65537) + wire.mpint(-(2**2047) - 1),
    "rsa even n": wire.string("ssh-rsa") + wire.mpint(65537) + wire.mpint(2**2047 + 2),
    "rsa huge": wire.string("ssh-rsa") + wire.mpint(65537) + wire.mpint(2**16400 + 1),
    "rsa exponent 1": wire.string("ssh-rsa") + wire.mpint(1) + wire.mpint(2**2047 + 1),
    "rsa non-canonical mpint": wire.string("ssh-rsa")
    + wire.string(b"\x00\x01\x00\x01")
    + wire.mpint(2**2047 + 1),
    "ecdsa wrong curve id": wire.string("ecdsa-sha2-nistp256")
    + wire.string("nistp384")
    + wire.string(b"\x04" + b"\x01" * 64),
    "ecdsa not on curve": wire.string("ecdsa-sha2-nistp256")
    + wire.string("nistp256")
    + wire.string(b"\x04" + b"\x01" * 64),
    "ecdsa point at infinity": wire.string("ecdsa-sha2-nistp256")
    + wire.string("nistp256")
    + wire.string(b"\x00"),
    "ecdsa empty point": wire.string("ecdsa-sha2-nistp256")
    + wire.string("nistp256")
    + wire.string(b""),
}


@pytest.mark.parametrize("blob", BAD_BLOBS.values(), ids=BAD_BLOBS.keys())
def test_bad_public_key_blobs_raise_decode_error(blob: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_public_key(blob)


def test_compressed_ecdsa_point_is_refused() -> None:
    key = _public("ecdsa256").to_cryptography()
    from cryptography.hazmat.primitives import serialization

    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    blob = wire.string("ecdsa-sha2-nistp256") + wire.string("nistp256") + wire.string(point)
    with pytest.raises(DecodeError, match="uncompressed"):
        parse_public_key(blob)


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_parse_public_key_raises_only_decode_error(data: bytes) -> None:
    try:
        key = parse_public_key(data)
    except DecodeError:
        return
    assert key.blob == data


@given(st.binary(max_size=120), st.sampled_from(FIXTURES))
@settings(max_examples=200)
def test_mutated_blobs_raise_only_decode_error(data: bytes, name: str) -> None:
    blob = _public(name).blob
    cut = len(data) % (len(blob) + 1)
    try:
        parse_public_key(blob[:cut] + data)
    except DecodeError:
        pass


BAD_LINES = [
    "",
    "ssh-ed25519",
    "ssh-ed25519 !!!notbase64",
    "ssh-ed25519 AAAA",
    "ssh-rsa " + (DATA / "ed25519.pub").read_text().split()[1],  # type mismatch
]


@pytest.mark.parametrize("line", BAD_LINES)
def test_bad_public_key_lines_raise_key_format_error(line: str) -> None:
    with pytest.raises(KeyFormatError):
        public_key_from_line(line)


# --- signatures ----------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_signatures_made_by_ssh_keygen_verify(name: str) -> None:
    public_blob, signature, signed = _sshsig(name)
    key = parse_public_key(public_blob)
    assert key == _public(name)
    assert key.verify(signature, signed)
    assert not key.verify(signature, signed + b"x")


@pytest.mark.parametrize("name", ["ed25519", "rsa2048"])
def test_deterministic_signatures_equal_ssh_keygen_byte_for_byte(name: str) -> None:
    # Ed25519 and RSA PKCS#1 v1.5 are deterministic, so these are known answers.
    _, signature, signed = _sshsig(name)
    algorithm = wire.Reader(signature).string().decode()
    assert _private(name).sign(signed, algorithm) == signature


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_sign_then_verify_for_every_algorithm(key_type: str) -> None:
    private = _generated(key_type)
    public = parse_public_key(private.public.blob)
    for algorithm in public.signature_algorithms():
        sig = private.sign(b"exchange hash", algorithm)
        assert wire.Reader(sig).string().decode() == algorithm
        assert public.verify(sig, b"exchange hash", allowed=[algorithm])
        assert not public.verify(sig, b"exchange hasH", allowed=[algorithm])
        assert private.sign(b"exchange hash", algorithm) == sig  # deterministic


def test_default_signature_algorithms() -> None:
    assert _generated("ssh-rsa").public.signature_algorithms() == (
        "rsa-sha2-512",
        "rsa-sha2-256",
        "ssh-rsa",
    )
    sig = _generated("ssh-rsa").sign(b"x")
    assert wire.Reader(sig).string() == b"rsa-sha2-512"
    for key_type in ["ssh-ed25519", "ecdsa-sha2-nistp384"]:
        assert _generated(key_type).public.signature_algorithms() == (key_type,)
        assert wire.Reader(_generated(key_type).sign(b"x")).string() == key_type.encode()


def test_ssh_rsa_sha1_is_refused_unless_allowed() -> None:
    private = _generated("ssh-rsa")
    sig = private.sign(b"data", "ssh-rsa")
    assert not private.public.verify(sig, b"data")
    assert private.public.verify(sig, b"data", allowed={"ssh-rsa", "rsa-sha2-512"})
    sha2 = private.sign(b"data", "rsa-sha2-256")
    assert private.public.verify(sha2, b"data")
    assert not private.public.verify(sha2, b"data", allowed={"rsa-sha2-512"})


def test_algorithm_must_match_key_type() -> None:
    # RFC 8332 §3: an RSA signature labelled with another algorithm, or any signature
    # claiming a different key type's algorithm, is refused.
    rsa_key = _generated("ssh-rsa")
    raw = wire.Reader(rsa_key.sign(b"d", "rsa-sha2-256"))
    raw.string()
    body = raw.string()
    relabelled = wire.string("rsa-sha2-512") + wire.string(body)
    assert not rsa_key.public.verify(relabelled, b"d")
    ed = _generated("ssh-ed25519")
    ed_sig = wire.Reader(ed.sign(b"d"))
    ed_sig.string()
    as_ecdsa = wire.string("ecdsa-sha2-nistp256") + wire.string(ed_sig.string())
    assert not ed.public.verify(as_ecdsa, b"d")
    with pytest.raises(LocalProtocolError):
        ed.sign(b"d", "rsa-sha2-512")
    with pytest.raises(LocalProtocolError):
        _generated("ecdsa-sha2-nistp256").sign(b"d", "ecdsa-sha2-nistp384")


def test_short_rsa_signature_is_padded_like_openssh() -> None:
    private = _generated("ssh-rsa")
    for i in range(4000):  # find a signature with a leading zero byte (p = 1/256 each)
        data = b"%d" % i
        r = wire.Reader(private.sign(data))
        r.string()
        body = r.string()
        if body[0] == 0:
            break
    else:
        pytest.fail("no signature with a leading zero byte in 4000 tries")
    stripped = wire.string("rsa-sha2-512") + wire.string(body[1:])
    assert private.public.verify(stripped, data)
    too_long = wire.string("rsa-sha2-512") + wire.string(b"\x00" + body)
    assert not private.public.verify(too_long, data)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_every_bit_flip_in_a_signature_fails(key_type: str) -> None:
    private = _generated(key_type)
    sig = bytearray(private.sign(b"payload"))
    # Flip each bit of the algorithm-independent part; RSA is long, so sample it.
    positions = range(0, len(sig) * 8, 1 if len(sig) < 200 else 7)
    for bit in positions:
        sig[bit // 8] ^= 1 << (bit % 8)
        assert not private.public.verify(bytes(sig), b"payload"), bit
        sig[bit // 8] ^= 1 << (bit % 8)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_malformed_signature_blobs_return_false(key_type: str) -> None:
    public = _generated(key_type).public
    algorithm = public.signature_algorithms()[0]
    for bad in [
        b"",
        b"\x00\x00\x00",
        wire.string(algorithm),
        wire.string(algorithm) + wire.string(b""),
        wire.string(algorithm) + wire.string(b"\x00" * 64) + b"trailing",
        wire.string(b"\xff\xff") + wire.string(b"x"),
        wire.string(algorithm) + wire.string(wire.mpint(0) + wire.mpint(1)),
        wire.string(algorithm) + wire.string(wire.mpint(-5) + wire.mpint(-5)),
        wire.string(algorithm) + wire.string(wire.mpint(1)),
        wire.string(algorithm) + wire.string(wire.mpint(2**600) + wire.mpint(2**600)),
    ]:
        assert public.verify(bad, b"data") is False


@given(st.binary(max_size=300))
@settings(max_examples=200)
def test_verify_never_raises(data: bytes) -> None:
    for key_type in ["ssh-ed25519", "ecdsa-sha2-nistp256"]:
        public = _generated(key_type).public
        assert public.verify(data, b"x") is False
        assert public.verify(wire.string(key_type) + wire.string(data), b"x") is False


# --- key objects ---------------------------------------------------------------------


def test_generate_defaults() -> None:
    assert PrivateKey.generate().public.key_type == "ssh-ed25519"
    assert keys.DEFAULT_RSA_BITS >= 3072
    with pytest.raises(KeyFormatError):
        PrivateKey.generate("ssh-dss")


def test_cryptography_objects_round_trip() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    key = PrivateKey.from_cryptography(ed)
    assert key.to_cryptography() is ed
    assert isinstance(key.public.to_cryptography(), ed25519.Ed25519PublicKey)
    assert PublicKey.from_cryptography(ed.public_key()) == key.public
    p256 = ec.generate_private_key(ec.SECP256R1())
    assert PrivateKey.from_cryptography(p256).public.key_type == "ecdsa-sha2-nistp256"
    with pytest.raises(KeyFormatError):
        PrivateKey.from_cryptography(ec.generate_private_key(ec.SECP256K1()))
    with pytest.raises(KeyFormatError):
        PrivateKey.from_cryptography(b"not a key")
    assert isinstance(_generated("ssh-rsa").public.to_cryptography(), rsa.RSAPublicKey)
    assert "SHA256:" in repr(key) and "ssh-ed25519" in repr(key.public)


def test_openssh_line_without_comment() -> None:
    public = _public("ed25519")
    assert public.openssh_line() == " ".join(public.openssh_line("c").split()[:2])


# --- host-key algorithm tables ---------------------------------------------------------


def test_host_key_algorithm_table() -> None:
    assert HOST_KEY_ALGORITHMS["rsa-sha2-512"] == "ssh-rsa"
    assert HOST_KEY_ALGORITHMS["ssh-ed25519"] == "ssh-ed25519"
    assert (
        HOST_KEY_ALGORITHMS["rsa-sha2-256-cert-v01@openssh.com"] == "ssh-rsa-cert-v01@openssh.com"
    )
    for algorithm, key_type in HOST_KEY_ALGORITHMS.items():
        plain = algorithm.removesuffix(keys.CERT_SUFFIX)
        assert key_type.endswith(keys.CERT_SUFFIX) == (plain != algorithm)
        assert signature_algorithm_for(algorithm) == plain
    assert signature_algorithm_for("rsa-sha2-512-cert-v01@openssh.com") == "rsa-sha2-512"
    with pytest.raises(LocalProtocolError):
        signature_algorithm_for("ssh-dss")


def test_registered_key_types_are_dispatched() -> None:
    # certs.py registers its certificate parsers like this.
    name = "test-only-cert-v01@openssh.com"
    inner = _public("ed25519")

    class Wrapped(PublicKey):
        __slots__ = ()
        key_type = name

        def __init__(self, blob: bytes) -> None:
            self.blob = blob

        def _verify(self, algorithm: str, sig: bytes, data: bytes) -> bool:
            return inner.verify(wire.string(algorithm) + wire.string(sig), data)

        def signature_algorithms(self) -> tuple[str, ...]:
            return inner.signature_algorithms()

    register_key_type(name, Wrapped)
    try:
        blob = wire.string(name) + wire.string(inner.blob)
        key = parse_public_key(blob)
        assert isinstance(key, Wrapped)
        _, signature, signed = _sshsig("ed25519")
        assert key.verify(signature, signed)
    finally:
        del keys._PARSERS[name]
    with pytest.raises(DecodeError):
        parse_public_key(blob)
