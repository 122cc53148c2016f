"""Key files: OpenSSH private keys (``openssh-key-v1``), PEM/PKCS#8, public key lines.

Theory of operation
-------------------
``openssh-key-v1`` (PROTOCOL.key) is what ``ssh-keygen`` writes::

    "openssh-key-v1\\0" string(cipher) string(kdf) string(kdf options)
    uint32(1) string(public key blob) string(private section, maybe encrypted)

The private section is ``uint32 check, uint32 check`` (equal; a mismatch after
decryption means a wrong passphrase), the key's private fields, ``string(comment)``,
and padding bytes 1, 2, 3 ... up to the cipher's block size. Passphrase-protected
files use the ``bcrypt`` KDF (bcrypt-pbkdf, from the ``bcrypt`` package) to derive
key and IV for ``aes256-ctr``, exactly as ``ssh-keygen`` does.

We parse and write this format ourselves rather than through ``cryptography``'s
``load_ssh_private_key`` because we need what it does not give: the comment, a
"wrong passphrase" answer distinct from "not a key", a cap on KDF rounds (a hostile
file must not buy minutes of CPU), and the private-field codec, which the ssh-agent
protocol shares (``SSH_AGENTC_ADD_IDENTITY`` carries keys in the same encoding, and
certificates in OpenSSH's ``*-cert-v01`` private form): :func:`encode_private_key`
and :func:`decode_private_key`. PEM and PKCS#8 files go through ``cryptography``.

Rules:

- RSA keys below :data:`~trioport.sshproto.keys.MIN_RSA_BITS` bits are refused on load
  with a message that says so.
- Errors: :class:`~trioport.errors.KeyFormatError` for files,
  :class:`~trioport.errors.DecodeError` from the wire codec. A wrong passphrase is
  ``KeyFormatError("wrong passphrase or corrupt key")``.
- Randomness (salt, check integer) comes from the caller's ``rng``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable

import bcrypt
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import DecodeError, KeyFormatError
from .certs import CERTIFICATE_KEY_TYPES, Certificate
from .keys import (
    MAX_RSA_BITS,
    MIN_RSA_BITS,
    ECDSAPublicKey,
    PrivateKey,
    PublicKey,
    RSAPublicKey,
    parse_public_key,
    public_key_from_line,
)
from .wire import Reader, mpint, string, uint32

__all__ = [
    "DEFAULT_KDF_ROUNDS",
    "MAX_KDF_ROUNDS",
    "decode_private_key",
    "dump_private_key",
    "dump_public_key",
    "encode_private_key",
    "fingerprint_line",
    "is_encrypted",
    "key_bits",
    "load_private_key",
    "load_private_key_and_comment",
    "load_public_key_file",
]

#: bcrypt-pbkdf rounds ``ssh-keygen`` uses unless given ``-a``.
DEFAULT_KDF_ROUNDS = 16
#: Most rounds we run for a file we are asked to open (about 4 s of CPU). ``ssh-keygen
#: -a`` values above this need ``max_kdf_rounds=`` raised explicitly.
MAX_KDF_ROUNDS = 500
#: Longest private key file we read (an RSA-16384 key is about 13 KiB).
MAX_KEY_FILE = 64 * 1024

_MAGIC = b"openssh-key-v1\x00"
_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_END = "-----END OPENSSH PRIVATE KEY-----"
_WRONG = "wrong passphrase or corrupt key"

#: PROTOCOL.key ciphers we read: name -> (key bytes, iv bytes, block size, mode, tag).
_CIPHERS: dict[str, tuple[int, int, int, str, int]] = {
    "none": (0, 0, 8, "none", 0),
    "aes128-ctr": (16, 16, 16, "ctr", 0),
    "aes192-ctr": (24, 16, 16, "ctr", 0),
    "aes256-ctr": (32, 16, 16, "ctr", 0),
    "aes128-cbc": (16, 16, 16, "cbc", 0),
    "aes192-cbc": (24, 16, 16, "cbc", 0),
    "aes256-cbc": (32, 16, 16, "cbc", 0),
    "aes128-gcm@openssh.com": (16, 12, 16, "gcm", 16),
    "aes256-gcm@openssh.com": (32, 12, 16, "gcm", 16),
}

_CURVES = {
    "ecdsa-sha2-nistp256": ("nistp256", ec.SECP256R1()),
    "ecdsa-sha2-nistp384": ("nistp384", ec.SECP384R1()),
    "ecdsa-sha2-nistp521": ("nistp521", ec.SECP521R1()),
}


# --- the private-field codec (shared with the agent) -----------------------------


def _private_fields(key: PrivateKey) -> tuple[bytes, bytes]:
    """(public part as in the private encoding, private-only part) for ``key``."""
    k = key.to_cryptography()
    if isinstance(k, ed25519.Ed25519PrivateKey):
        seed = k.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        pk = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return string(pk), string(seed + pk)
    if isinstance(k, rsa.RSAPrivateKey):
        numbers = k.private_numbers()
        pub = numbers.public_numbers
        # OpenSSH's private order is n, e (the public blob's is e, n).
        return mpint(pub.n) + mpint(pub.e), b"".join(
            mpint(v) for v in (numbers.d, numbers.iqmp, numbers.p, numbers.q)
        )
    assert isinstance(k, ec.EllipticCurvePrivateKey)
    reader = Reader(key.public.blob)
    reader.string()
    return reader.rest(), mpint(k.private_numbers().private_value)


def encode_private_key(key: PrivateKey, certificate: Certificate | None = None) -> bytes:
    """The OpenSSH private encoding of a key, without comment.

    This is the key part of ``SSH_AGENTC_ADD_IDENTITY`` (draft-miller-ssh-agent §4.2)
    and of an ``openssh-key-v1`` private section. With ``certificate`` it is the
    ``*-cert-v01@openssh.com`` form: ``string(cert type) string(cert blob)`` followed
    by the private-only fields.

    Raises:
        KeyFormatError: ``certificate`` certifies a different key.
    """
    public_part, private_part = _private_fields(key)
    if certificate is None:
        return string(key.public.key_type) + public_part + private_part
    if certificate.key != key.public:
        raise KeyFormatError("the certificate is for a different key")
    if key.public.key_type == "ssh-ed25519":
        # The Ed25519 cert form repeats the public key before the private one.
        return string(certificate.key_type) + string(certificate.blob) + public_part + private_part
    return string(certificate.key_type) + string(certificate.blob) + private_part


def _positive(value: int, what: str) -> int:
    if value <= 0:
        raise DecodeError(f"private key {what} is not positive")
    return value


def _rsa_from(n: int, e: int, d: int, iqmp: int, p: int, q: int) -> rsa.RSAPrivateKey:
    bits = n.bit_length()
    if bits < MIN_RSA_BITS:
        raise DecodeError(
            f"RSA key of {bits} bits is too small: trioport requires at least {MIN_RSA_BITS} bits"
        )
    if bits > MAX_RSA_BITS:
        raise DecodeError(f"RSA key of {bits} bits is larger than the {MAX_RSA_BITS}-bit maximum")
    for value, what in (
        (e, "exponent"),
        (d, "exponent d"),
        (p, "prime p"),
        (q, "prime q"),
        (iqmp, "iqmp"),
    ):
        _positive(value, what)
    if p * q != n or p < 3 or q < 3:
        raise DecodeError("RSA private key primes do not match its modulus")
    try:
        numbers = rsa.RSAPrivateNumbers(
            p=p,
            q=q,
            d=d,
            dmp1=rsa.rsa_crt_dmp1(d, p),
            dmq1=rsa.rsa_crt_dmq1(d, q),
            iqmp=iqmp,
            public_numbers=rsa.RSAPublicNumbers(e, n),
        )
        return numbers.private_key()
    except (ValueError, OverflowError, UnsupportedAlgorithm) as exc:
        raise DecodeError(f"inconsistent RSA private key: {exc}") from None


def _ed25519_from(pk: bytes, sk: bytes) -> ed25519.Ed25519PrivateKey:
    # PROTOCOL.key / agent draft §4.2.3: pk is ENC(A); sk is k || ENC(A).
    if len(pk) != 32 or len(sk) != 64 or sk[32:] != pk:
        raise DecodeError("malformed ssh-ed25519 private key")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(sk[:32])
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if raw != pk:
        raise DecodeError("ssh-ed25519 private key does not match its public key")
    return key


def _ecdsa_from(key_type: str, public: PublicKey, d: int) -> ec.EllipticCurvePrivateKey:
    curve = _CURVES[key_type][1]
    try:
        key = ec.derive_private_key(_positive(d, "scalar"), curve)
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"invalid {key_type} private scalar: {exc}") from None
    if PublicKey.from_cryptography(key.public_key()) != public:
        raise DecodeError(f"{key_type} private key does not match its public key")
    return key


def decode_private_key(reader: Reader) -> tuple[PrivateKey, Certificate | None]:
    """Read one key in the OpenSSH private encoding (see :func:`encode_private_key`).

    Args:
        reader: positioned at the key type string; left after the last key field
            (the comment, if any, is the caller's to read).

    Returns:
        The private key, and its certificate for the ``*-cert-v01`` forms.

    Raises:
        DecodeError: truncated or malformed fields, an unsupported key type, a
            certificate for another key, halves that do not match, or an RSA key
            outside [MIN_RSA_BITS, MAX_RSA_BITS].
    """
    try:
        key_type = reader.string().decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("private key type is not ASCII") from None
    certificate: Certificate | None = None
    if key_type in CERTIFICATE_KEY_TYPES:
        cert = parse_public_key(reader.string())
        if not isinstance(cert, Certificate) or cert.key_type != key_type:
            raise DecodeError(f"{key_type} private key holds a different key type")
        certificate = cert
        plain_type = CERTIFICATE_KEY_TYPES[key_type][0]
        public = cert.key
    else:
        plain_type = key_type
        public = None
    crypto_key: object
    if plain_type == "ssh-ed25519":
        pk = reader.string()
        sk = reader.string()
        crypto_key = _ed25519_from(pk, sk)
    elif plain_type == "ssh-rsa":
        if certificate is None:
            n = reader.mpint()
            e = reader.mpint()
        else:
            assert isinstance(public, RSAPublicKey)
            pub_numbers = public.to_cryptography().public_numbers()
            n, e = pub_numbers.n, pub_numbers.e
        d, iqmp, p, q = (reader.mpint() for _ in range(4))
        crypto_key = _rsa_from(n, e, d, iqmp, p, q)
    elif plain_type in _CURVES:
        if certificate is None:
            curve_id = reader.string()
            point = reader.string()
            public = parse_public_key(string(plain_type) + string(curve_id) + string(point))
        assert isinstance(public, ECDSAPublicKey)
        crypto_key = _ecdsa_from(plain_type, public, reader.mpint())
    else:
        raise DecodeError(f"unsupported private key type {key_type[:64]!r}")
    try:
        key = PrivateKey.from_cryptography(crypto_key)
    except KeyFormatError as exc:
        raise DecodeError(str(exc)) from None
    if public is not None and key.public != public:
        raise DecodeError("private key does not match its certificate")
    return key, certificate


# --- openssh-key-v1 files -------------------------------------------------------------


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode("utf-8") if isinstance(value, str) else value


def _cipher(name: str, key_iv: bytes, tag: bytes | None = None) -> Cipher:  # type: ignore[type-arg]
    key_len, iv_len, _, mode, _ = _CIPHERS[name]
    key, iv = key_iv[:key_len], key_iv[key_len : key_len + iv_len]
    if mode == "ctr":
        return Cipher(algorithms.AES(key), modes.CTR(iv))
    if mode == "cbc":
        return Cipher(algorithms.AES(key), modes.CBC(iv))
    return Cipher(algorithms.AES(key), modes.GCM(iv, tag))


def _unarmor(text: str) -> bytes:
    start = text.find(_BEGIN)
    end = text.find(_END, start)
    if start < 0 or end < 0:
        raise KeyFormatError("not an OpenSSH private key file")
    body = re.sub(r"\s+", "", text[start + len(_BEGIN) : end])
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("OpenSSH private key is not valid base64") from None


def _read_header(raw: bytes) -> tuple[str, bytes, int, bytes, bytes, bytes]:
    """Parse the outer structure: (cipher, salt, rounds, public blob, section, tag)."""
    if not raw.startswith(_MAGIC):
        raise DecodeError("missing openssh-key-v1 magic")
    reader = Reader(raw[len(_MAGIC) :])
    cipher = reader.string().decode("ascii", "replace")
    kdf = reader.string().decode("ascii", "replace")
    kdf_options = reader.string()
    nkeys = reader.uint32()
    if nkeys != 1:
        raise DecodeError(f"key file holds {nkeys} keys; exactly one is supported")
    public_blob = reader.string()
    section = reader.string()
    if cipher not in _CIPHERS:
        raise DecodeError(f"unsupported key file cipher {cipher[:64]!r}")
    tag = reader.raw(_CIPHERS[cipher][4])
    reader.end()
    salt, rounds = b"", 0
    if cipher == "none":
        if kdf != "none" or kdf_options:
            raise DecodeError("unencrypted key file names a KDF")
    else:
        if kdf != "bcrypt":
            raise DecodeError(f"unsupported key file KDF {kdf[:64]!r}")
        opts = Reader(kdf_options)
        salt = opts.string()
        rounds = opts.uint32()
        opts.end()
        if not salt or rounds == 0:
            raise DecodeError("bcrypt KDF needs a salt and at least one round")
    if len(section) % _CIPHERS[cipher][2]:
        raise DecodeError("private section is not a whole number of cipher blocks")
    return cipher, salt, rounds, public_blob, section, tag


def is_encrypted(data: bytes | str) -> bool:
    """Whether a private key file needs a passphrase (OpenSSH or PEM).

    Raises:
        KeyFormatError: not a private key file we can read.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if _BEGIN in text:
        try:
            return _read_header(_unarmor(text))[0] != "none"
        except DecodeError as exc:
            raise KeyFormatError(f"corrupt OpenSSH private key: {exc.description}") from None
    if "-----BEGIN ENCRYPTED PRIVATE KEY-----" in text or "Proc-Type: 4,ENCRYPTED" in text:
        return True
    if re.search(r"-----BEGIN (RSA |EC )?PRIVATE KEY-----", text):
        return False
    raise KeyFormatError("not a private key file")


def _load_openssh(
    text: str, passphrase: bytes | None, max_kdf_rounds: int
) -> tuple[PrivateKey, str]:
    try:
        cipher, salt, rounds, public_blob, section, tag = _read_header(_unarmor(text))
    except DecodeError as exc:
        raise KeyFormatError(f"corrupt OpenSSH private key: {exc.description}") from None
    if cipher != "none":
        if not passphrase:
            raise KeyFormatError("the key is passphrase-protected: a passphrase is required")
        if rounds > max_kdf_rounds:
            raise KeyFormatError(
                f"the key file asks for {rounds} bcrypt rounds; at most {max_kdf_rounds}"
                " are allowed"
            )
        key_len, iv_len = _CIPHERS[cipher][:2]
        key_iv = bcrypt.kdf(passphrase, salt, key_len + iv_len, rounds, ignore_few_rounds=True)
        decryptor = _cipher(cipher, key_iv, tag or None).decryptor()
        try:
            section = decryptor.update(section) + decryptor.finalize()
        except InvalidTag:
            raise KeyFormatError(_WRONG) from None
    reader = Reader(section)
    try:
        check1, check2 = reader.uint32(), reader.uint32()
        if check1 != check2:
            raise KeyFormatError(_WRONG if cipher != "none" else "corrupt key: check mismatch")
        key, certificate = decode_private_key(reader)
        comment = reader.string().decode("utf-8", "replace")
        padding = reader.rest()
    except DecodeError as exc:
        if cipher != "none":
            raise KeyFormatError(_WRONG) from None
        raise KeyFormatError(f"corrupt OpenSSH private key: {exc.description}") from None
    # PROTOCOL.key: deterministic padding 1, 2, 3 ... (OpenSSH checks the bytes,
    # not the length; cryptography's writer pads unencrypted keys to 16).
    if any(b != (i + 1) & 0xFF for i, b in enumerate(padding)):
        raise KeyFormatError("corrupt OpenSSH private key: bad padding")
    if certificate is not None:
        raise KeyFormatError("corrupt OpenSSH private key: it holds a certificate")
    if key.public.blob != public_blob:
        raise KeyFormatError("corrupt OpenSSH private key: public and private halves differ")
    return key, comment


#: The most PBKDF2 iterations an encrypted PKCS#8 file may ask for (OpenSSL writes
#: 2,048; a million takes about a second here). A hostile file could ask for 2^31.
MAX_PBKDF2_ITERATIONS = 1_000_000
#: The most memory an scrypt-encrypted PKCS#8 file may ask for (128 * N * r bytes).
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
#: The most scrypt parallelism (p) accepted.
MAX_SCRYPT_PARALLELISM = 16

_OID_PBES2 = bytes.fromhex("2a864886f70d01050d")
_OID_PBKDF2 = bytes.fromhex("2a864886f70d01050c")
_OID_SCRYPT = bytes.fromhex("2b06010401da47040b")


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER element at ``pos``: (tag, start of contents, end of contents)."""
    if pos + 2 > len(data):
        raise KeyFormatError("truncated DER in PKCS#8 key")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or pos + count > len(data):
            raise KeyFormatError("bad DER length in PKCS#8 key")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise KeyFormatError("truncated DER in PKCS#8 key")
    return tag, pos, pos + length


def _der_children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        element = _der(data, start)
        out.append(element)
        start = element[2]
    return out


def _der_int(data: bytes, element: tuple[int, int, int]) -> int:
    tag, start, end = element
    if tag != 0x02 or end - start > 16:
        raise KeyFormatError("bad integer in PKCS#8 encryption parameters")
    return int.from_bytes(data[start:end], "big", signed=True)


def _unarmor_pkcs8(data: bytes) -> bytes:
    """The DER inside a ``BEGIN ENCRYPTED PRIVATE KEY`` PEM block."""
    text = data.decode("ascii", "replace")
    begin = text.find("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    end = text.find("-----END ENCRYPTED PRIVATE KEY-----", begin)
    if begin < 0 or end < 0:
        return b""
    body = text[begin + len("-----BEGIN ENCRYPTED PRIVATE KEY-----") : end]
    return base64.b64decode("".join(body.split()), validate=True)


def _check_pkcs8_kdf(der: bytes) -> None:
    """Refuse an EncryptedPrivateKeyInfo whose key derivation is absurdly costly.

    RFC 5958 §3 / RFC 8018: PBES2 with PBKDF2 (iterations) or scrypt (N, r, p), or a
    PBES1/PKCS#12 scheme whose parameters are (salt, iterations). Checked before
    ``cryptography`` runs the derivation, which cannot be interrupted.
    """
    tag, start, end = _der(der, 0)
    top = _der_children(der, start, end) if tag == 0x30 else []
    if len(top) != 2 or top[0][0] != 0x30:
        return  # not encrypted PKCS#8: nothing to derive
    algorithm = _der_children(der, top[0][1], top[0][2])
    if len(algorithm) != 2 or algorithm[0][0] != 0x06 or algorithm[1][0] != 0x30:
        return
    oid = der[algorithm[0][1] : algorithm[0][2]]
    params = _der_children(der, algorithm[1][1], algorithm[1][2])
    if oid == _OID_PBES2:
        if not params or params[0][0] != 0x30:
            raise KeyFormatError("bad PBES2 parameters in PKCS#8 key")
        kdf = _der_children(der, params[0][1], params[0][2])
        if len(kdf) != 2 or kdf[0][0] != 0x06 or kdf[1][0] != 0x30:
            raise KeyFormatError("bad key derivation parameters in PKCS#8 key")
        kdf_oid = der[kdf[0][1] : kdf[0][2]]
        values = _der_children(der, kdf[1][1], kdf[1][2])
        if kdf_oid == _OID_SCRYPT:
            if len(values) < 4:
                raise KeyFormatError("bad scrypt parameters in PKCS#8 key")
            n, r, p = (_der_int(der, v) for v in values[1:4])
            if n < 2 or r < 1 or p < 1 or 128 * n * r > MAX_SCRYPT_MEMORY:
                raise KeyFormatError("PKCS#8 key asks for too much scrypt memory")
            if p > MAX_SCRYPT_PARALLELISM:
                raise KeyFormatError("PKCS#8 key asks for too much scrypt parallelism")
            return
    else:
        values = params  # PBES1 / PKCS#12 schemes: (salt, iterations)
    if len(values) > 1:
        iterations = _der_int(der, values[1])
        if iterations > MAX_PBKDF2_ITERATIONS:
            raise KeyFormatError(
                f"PKCS#8 key asks for {iterations} key derivation rounds"
                f" (at most {MAX_PBKDF2_ITERATIONS})"
            )


def _load_pem(data: bytes, passphrase: bytes | None) -> PrivateKey:
    if passphrase and b"ENCRYPTED PRIVATE KEY" in data:
        try:
            der = _unarmor_pkcs8(data)
            if der:
                _check_pkcs8_kdf(der)
        except ValueError:
            raise KeyFormatError("cannot read PEM private key: bad base64") from None
    try:
        key = serialization.load_pem_private_key(data, passphrase or None)
    except TypeError:
        if passphrase:  # "Password was given but private key is not encrypted"
            return _load_pem(data, None)
        raise KeyFormatError("the key is passphrase-protected: a passphrase is required") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        if passphrase and is_encrypted(data):
            raise KeyFormatError(_WRONG) from None
        raise KeyFormatError(f"cannot read PEM private key: {exc}") from None
    except Exception as exc:  # e.g. OpenSSL failing to allocate
        raise KeyFormatError(f"cannot read PEM private key: {type(exc).__name__}") from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise KeyFormatError(
            f"RSA key of {key.key_size} bits is too small:"
            f" trioport requires at least {MIN_RSA_BITS} bits"
        )
    return PrivateKey.from_cryptography(key)


def load_private_key_and_comment(
    data: bytes | str,
    passphrase: str | bytes | None = None,
    *,
    max_kdf_rounds: int = MAX_KDF_ROUNDS,
) -> tuple[PrivateKey, str]:
    """Read a private key file and its comment (PEM/PKCS#8 files have none: ``""``).

    Args:
        data: the file: ``openssh-key-v1``, PKCS#8 (``BEGIN [ENCRYPTED] PRIVATE
            KEY``) or traditional PEM (``BEGIN RSA/EC PRIVATE KEY``).
        passphrase: for encrypted files; ignored for unencrypted ones.
        max_kdf_rounds: refuse OpenSSH files asking for more bcrypt rounds.

    Raises:
        KeyFormatError: not a key file, corrupt, an unsupported type, an RSA key
            under 2048 bits, a missing passphrase, or "wrong passphrase or corrupt
            key".
    """
    if len(data) > MAX_KEY_FILE:
        raise KeyFormatError(f"key file larger than {MAX_KEY_FILE} bytes")
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    text = raw.decode("utf-8", "replace")
    secret = _as_bytes(passphrase)
    if _BEGIN in text:
        return _load_openssh(text, secret, max_kdf_rounds)
    if re.search(r"-----BEGIN (RSA |EC |ENCRYPTED )?PRIVATE KEY-----", text):
        return _load_pem(raw, secret), ""
    raise KeyFormatError("not a private key file")


def load_private_key(
    data: bytes | str,
    passphrase: str | bytes | None = None,
    *,
    max_kdf_rounds: int = MAX_KDF_ROUNDS,
) -> PrivateKey:
    """Read a private key file; see :func:`load_private_key_and_comment`.

    Raises:
        KeyFormatError: see :func:`load_private_key_and_comment`.
    """
    return load_private_key_and_comment(data, passphrase, max_kdf_rounds=max_kdf_rounds)[0]


def dump_private_key(
    key: PrivateKey,
    passphrase: str | bytes | None = None,
    comment: str = "",
    *,
    rng: Callable[[int], bytes] | None = None,
    rounds: int = DEFAULT_KDF_ROUNDS,
    format: str = "openssh",
) -> bytes:
    """Serialise a private key file.

    Args:
        key: the key.
        passphrase: encrypt with bcrypt-pbkdf + aes256-ctr (OpenSSH) or the best
            PKCS#8 encryption; ``None`` or empty writes it unencrypted.
        comment: stored in OpenSSH files (PKCS#8 has no comment).
        rng: randomness for the salt and check integer; required to encrypt an
            OpenSSH file (without it, an unencrypted file's check integer is
            derived from the public key).
        rounds: bcrypt-pbkdf rounds (``ssh-keygen -a``).
        format: ``"openssh"`` (what ``ssh-keygen`` writes) or ``"pkcs8"`` (PEM;
            ``cryptography`` draws its own salt).

    Returns:
        The file's bytes, ending in a newline.

    Raises:
        KeyFormatError: an unknown format, or encryption asked without ``rng``.
    """
    secret = _as_bytes(passphrase) or None
    if format == "pkcs8":
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(secret)
            if secret
            else serialization.NoEncryption()
        )
        return key.to_cryptography().private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    if format != "openssh":
        raise KeyFormatError(f"unknown private key format {format!r}")
    if secret and rng is None:
        raise KeyFormatError("encrypting a key file needs rng= for its salt")
    if rounds < 1:
        raise KeyFormatError("bcrypt rounds must be at least 1")
    cipher = "aes256-ctr" if secret else "none"
    key_len, iv_len, block, _, _ = _CIPHERS[cipher]
    check = rng(4) if rng is not None else hashlib.sha256(key.public.blob).digest()[:4]
    section = check + check + encode_private_key(key) + string(comment)
    pad = -len(section) % block
    section += bytes(range(1, pad + 1))
    if secret:
        assert rng is not None
        salt = rng(16)
        kdf, kdf_options = "bcrypt", string(salt) + uint32(rounds)
        key_iv = bcrypt.kdf(secret, salt, key_len + iv_len, rounds, ignore_few_rounds=True)
        encryptor = _cipher(cipher, key_iv).encryptor()
        section = encryptor.update(section) + encryptor.finalize()
    else:
        kdf, kdf_options = "none", b""
    raw = b"".join(
        [
            _MAGIC,
            string(cipher),
            string(kdf),
            string(kdf_options),
            uint32(1),
            string(key.public.blob),
            string(section),
        ]
    )
    body = base64.b64encode(raw).decode("ascii")
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    return ("\n".join([_BEGIN, *lines, _END]) + "\n").encode("ascii")


# --- public key files and fingerprints ------------------------------------------------


def load_public_key_file(data: bytes | str) -> tuple[PublicKey, str]:
    """Read a ``*.pub`` (or ``*-cert.pub``) file: its first key line and comment.

    Raises:
        KeyFormatError: no key line, or a bad one.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key = public_key_from_line(line)
        fields = line.split(None, 2)
        return key, fields[2].strip() if len(fields) > 2 else ""
    raise KeyFormatError("no public key in file")


def dump_public_key(key: PublicKey, comment: str = "") -> bytes:
    """A ``*.pub`` file: the key line and a newline."""
    if "\n" in comment or "\r" in comment:
        raise KeyFormatError("a key comment cannot hold a newline")
    return (key.openssh_line(comment) + "\n").encode("utf-8")


def key_bits(key: PublicKey) -> int:
    """The key size ``ssh-keygen -l`` prints: modulus bits, curve bits, 256 for Ed25519."""
    plain = key.key if isinstance(key, Certificate) else key
    crypto = plain.to_cryptography()
    if isinstance(crypto, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return crypto.key_size
    return 256


def fingerprint_line(key: PublicKey, comment: str = "") -> str:
    """One line as ``ssh-keygen -l`` prints it: ``"256 SHA256:... comment (ED25519)"``."""
    plain = key.key if isinstance(key, Certificate) else key
    name = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA"}.get(plain.key_type, "ECDSA")
    if isinstance(key, Certificate):
        name += "-CERT"
    return f"{key_bits(key)} {key.fingerprint()} {comment or 'no comment'} ({name})"
