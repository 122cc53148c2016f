"""SSH public keys, private keys and signatures.

Theory of operation
-------------------
A :class:`PublicKey` is defined by its *blob*, the wire encoding that goes into
KEXDH_REPLY, USERAUTH_REQUEST, ``authorized_keys`` lines and certificates (RFC 4253
§6.6). Two keys are equal exactly when their blobs are equal. One subclass per key
type does the parsing and signature checking; :func:`parse_public_key` dispatches on
the leading key-type string through a registry, so ``certs.py`` can add the
``*-cert-v01@openssh.com`` types with :func:`register_key_type` without this module
knowing about certificates.

Signatures travel as a *signature blob*: ``string(algorithm) || string(signature)``.
:meth:`PublicKey.verify` never raises for bad input: a malformed blob, an algorithm
that does not belong to the key type (RFC 8332 §3), an algorithm the caller did not
allow, or a wrong signature all answer ``False``, so a hostile peer cannot turn a
bad signature into anything other than "no".

Rules:

- Every primitive is ``cryptography``'s; this module only encodes and decodes.
- SHA-1 signatures (``ssh-rsa``) are refused unless the caller names ``ssh-rsa`` in
  ``allowed`` (OpenSSH 8.8 turned them off by default).
- RSA keys shorter than :data:`MIN_RSA_BITS` (2048 bits; OpenSSH's floor is 1024, NIST
  SP 800-131A's is 2048) or longer than :data:`MAX_RSA_BITS` are refused *when parsed*
  with :class:`~trioport.errors.DecodeError`, like any other unusable blob, so the
  transport treats a weak host key like a broken one and userauth answers FAILURE.
  :meth:`PrivateKey.from_cryptography` refuses them with
  :class:`~trioport.errors.KeyFormatError`.
- Signing is deterministic for every key type: Ed25519 natively, RSA PKCS#1 v1.5, and
  ECDSA with RFC 6979 nonces (``deterministic_signing=True``), so a fixed RNG replays
  a handshake byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Collection
from typing import ClassVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ..errors import DecodeError, KeyFormatError, LocalProtocolError
from .wire import Reader, mpint, string

__all__ = [
    "CERT_SUFFIX",
    "HOST_KEY_ALGORITHMS",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "ECDSAPublicKey",
    "Ed25519PublicKey",
    "PrivateKey",
    "PublicKey",
    "RSAPublicKey",
    "parse_public_key",
    "public_key_from_line",
    "register_key_type",
    "signature_algorithm_for",
]

#: Smallest RSA modulus we accept, in bits (NIST SP 800-131A; OpenSSH's floor is 1024).
MIN_RSA_BITS = 2048
#: Largest RSA modulus we accept, in bits (OpenSSH ``OPENSSL_RSA_MAX_MODULUS_BITS``):
#: bounds the cost of one verification a peer can make us do.
MAX_RSA_BITS = 16384
#: Default size of a generated RSA key (NIST: 128-bit security).
DEFAULT_RSA_BITS = 3072

#: Suffix of OpenSSH certificate key types and host-key algorithms (PROTOCOL.certkeys).
CERT_SUFFIX = "-cert-v01@openssh.com"

# --- host-key algorithms (RFC 4253 §6.6, RFC 8332 §3, RFC 5656 §6.2, RFC 8709) ------

#: Host-key algorithm name (as negotiated in KEXINIT) -> the key type it needs.
#: RSA has three algorithms over one key type (RFC 8332); certificates carry the
#: same mapping with the certificate suffix (PROTOCOL.certkeys).
HOST_KEY_ALGORITHMS: dict[str, str] = {
    "ssh-ed25519": "ssh-ed25519",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
    "rsa-sha2-512": "ssh-rsa",
    "rsa-sha2-256": "ssh-rsa",
    "ssh-rsa": "ssh-rsa",
    "ssh-ed25519" + CERT_SUFFIX: "ssh-ed25519" + CERT_SUFFIX,
    "ecdsa-sha2-nistp256" + CERT_SUFFIX: "ecdsa-sha2-nistp256" + CERT_SUFFIX,
    "ecdsa-sha2-nistp384" + CERT_SUFFIX: "ecdsa-sha2-nistp384" + CERT_SUFFIX,
    "ecdsa-sha2-nistp521" + CERT_SUFFIX: "ecdsa-sha2-nistp521" + CERT_SUFFIX,
    "rsa-sha2-512" + CERT_SUFFIX: "ssh-rsa" + CERT_SUFFIX,
    "rsa-sha2-256" + CERT_SUFFIX: "ssh-rsa" + CERT_SUFFIX,
    "ssh-rsa" + CERT_SUFFIX: "ssh-rsa" + CERT_SUFFIX,
}


def signature_algorithm_for(host_key_algorithm: str) -> str:
    """The signature algorithm a host-key algorithm signs the exchange hash with.

    ``"rsa-sha2-512-cert-v01@openssh.com"`` signs with ``"rsa-sha2-512"``; a plain
    algorithm signs with itself.

    Args:
        host_key_algorithm: a key of :data:`HOST_KEY_ALGORITHMS`.

    Returns:
        The signature algorithm name that goes in the signature blob.

    Raises:
        LocalProtocolError: the name is not a host-key algorithm we know.
    """
    if host_key_algorithm not in HOST_KEY_ALGORITHMS:
        raise LocalProtocolError(f"unknown host key algorithm {host_key_algorithm!r}")
    return host_key_algorithm.removesuffix(CERT_SUFFIX)


# --- public keys -------------------------------------------------------------------


class PublicKey:
    """An SSH public key, identified by its wire blob.

    Subclasses set :attr:`key_type` and implement :meth:`_verify` and
    :meth:`to_cryptography`. Equality and hashing use :attr:`blob` only.
    """

    __slots__ = ("blob",)

    #: The key type name that starts the blob, e.g. ``"ssh-ed25519"``.
    key_type: ClassVar[str] = ""
    blob: bytes

    def signature_algorithms(self) -> tuple[str, ...]:
        """The signature algorithms this key can verify, best first."""
        return (self.key_type,)

    def verify(
        self, signature: bytes, data: bytes, *, allowed: Collection[str] | None = None
    ) -> bool:
        """Check a signature blob over ``data``.

        Args:
            signature: ``string(algorithm) || string(signature)`` as on the wire.
            data: the signed bytes.
            allowed: signature algorithms the caller accepts; ``None`` means all of
                this key's algorithms except ``ssh-rsa`` (SHA-1).

        Returns:
            ``True`` only for a valid signature made with an allowed algorithm that
            belongs to this key type; ``False`` for anything else (never raises).
        """
        try:
            reader = Reader(signature)
            algorithm = reader.string().decode("ascii")
            sig = reader.string()
            reader.end()
        except (DecodeError, UnicodeDecodeError):
            return False
        # RFC 8332 §3: the algorithm must be one this key type signs with.
        if algorithm not in self.signature_algorithms():
            return False
        if allowed is None:
            if algorithm == "ssh-rsa":  # SHA-1: opt-in only
                return False
        elif algorithm not in allowed:
            return False
        try:
            return self._verify(algorithm, sig, data)
        except (InvalidSignature, ValueError, TypeError, DecodeError, OverflowError):
            return False

    def _verify(self, algorithm: str, sig: bytes, data: bytes) -> bool:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """The SHA256 fingerprint as ``ssh-keygen -l`` prints it: ``SHA256:<base64>``."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    def to_cryptography(self) -> object:
        """The equivalent ``cryptography`` public key object."""
        raise NotImplementedError

    def openssh_line(self, comment: str = "") -> str:
        """The one-line OpenSSH form, ``"ssh-ed25519 AAAA... comment"``."""
        line = f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"
        return f"{line} {comment}" if comment else line

    @staticmethod
    def from_cryptography(key: object) -> PublicKey:
        """Wrap a ``cryptography`` public key (Ed25519, RSA or ECDSA on P-256/384/521).

        Raises:
            KeyFormatError: an unsupported key type, curve or RSA size.
        """
        if isinstance(key, ed25519.Ed25519PublicKey):
            return Ed25519PublicKey(key)
        if isinstance(key, rsa.RSAPublicKey):
            if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
                raise KeyFormatError(
                    f"RSA key of {key.key_size} bits: must be {MIN_RSA_BITS}..{MAX_RSA_BITS}"
                )
            return RSAPublicKey(key)
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in _CURVE_BY_NAME:
                raise KeyFormatError(f"unsupported elliptic curve {key.curve.name}")
            return ECDSAPublicKey(key)
        raise KeyFormatError(f"unsupported key type {type(key).__name__}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self.blob == other.blob

    def __hash__(self) -> int:
        return hash(self.blob)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key_type} {self.fingerprint()}>"


class Ed25519PublicKey(PublicKey):
    """``ssh-ed25519`` (RFC 8709 §4): ``string("ssh-ed25519") || string(key[32])``."""

    __slots__ = ("_key",)
    key_type = "ssh-ed25519"

    def __init__(self, key: ed25519.Ed25519PublicKey) -> None:
        self._key = key
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.blob = string(self.key_type) + string(raw)

    @classmethod
    def _parse(cls, blob: bytes) -> Ed25519PublicKey:
        reader = Reader(blob)
        reader.string()  # the key type, checked by parse_public_key
        raw = reader.string()
        reader.end()
        if len(raw) != 32:
            raise DecodeError(f"ssh-ed25519 public key is {len(raw)} bytes, not 32")
        return cls(ed25519.Ed25519PublicKey.from_public_bytes(raw))

    def _verify(self, algorithm: str, sig: bytes, data: bytes) -> bool:
        # RFC 8709 §6: the signature is the 64-byte Ed25519 signature.
        if len(sig) != 64:
            return False
        self._key.verify(sig, data)
        return True

    def to_cryptography(self) -> ed25519.Ed25519PublicKey:
        """The ``cryptography`` Ed25519 public key."""
        return self._key


#: RFC 8332 §3 signature algorithm -> hash; order is our preference.
_RSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "rsa-sha2-512": hashes.SHA512,
    "rsa-sha2-256": hashes.SHA256,
    "ssh-rsa": hashes.SHA1,
}


class RSAPublicKey(PublicKey):
    """``ssh-rsa`` (RFC 4253 §6.6): ``string("ssh-rsa") || mpint(e) || mpint(n)``.

    One key type, three signature algorithms (RFC 8332): ``rsa-sha2-512``,
    ``rsa-sha2-256`` and the SHA-1 ``ssh-rsa``.
    """

    __slots__ = ("_key",)
    key_type = "ssh-rsa"

    def __init__(self, key: rsa.RSAPublicKey) -> None:
        self._key = key
        numbers = key.public_numbers()
        self.blob = string(self.key_type) + mpint(numbers.e) + mpint(numbers.n)

    @property
    def bits(self) -> int:
        """The modulus size in bits."""
        return self._key.key_size

    @classmethod
    def _parse(cls, blob: bytes) -> RSAPublicKey:
        reader = Reader(blob)
        reader.string()
        e = reader.mpint()
        n = reader.mpint()
        reader.end()
        if n <= 0 or e <= 0 or n % 2 == 0:
            raise DecodeError("ssh-rsa key has an even or non-positive modulus or exponent")
        bits = n.bit_length()
        if bits < MIN_RSA_BITS:
            raise DecodeError(f"ssh-rsa key of {bits} bits is below the {MIN_RSA_BITS}-bit minimum")
        if bits > MAX_RSA_BITS:
            raise DecodeError(f"ssh-rsa key of {bits} bits is above the {MAX_RSA_BITS}-bit maximum")
        try:
            key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:  # even modulus, e < 3, e >= n ...
            raise DecodeError(f"invalid ssh-rsa key: {exc}") from None
        return cls(key)

    def signature_algorithms(self) -> tuple[str, ...]:
        """``("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")``."""
        return tuple(_RSA_HASHES)

    def _verify(self, algorithm: str, sig: bytes, data: bytes) -> bool:
        # RFC 8332 §3: S is as long as the modulus. Like OpenSSH we accept a shorter
        # one (some signers strip leading zeros) by padding it back, never a longer one.
        size = (self._key.key_size + 7) // 8
        if len(sig) > size:
            return False
        sig = sig.rjust(size, b"\x00")
        self._key.verify(sig, data, padding.PKCS1v15(), _RSA_HASHES[algorithm]())
        return True

    def to_cryptography(self) -> rsa.RSAPublicKey:
        """The ``cryptography`` RSA public key."""
        return self._key


#: RFC 5656 §6.2.1: key type -> (curve identifier, curve, hash).
_ECDSA_CURVES: dict[str, tuple[str, ec.EllipticCurve, type[hashes.HashAlgorithm]]] = {
    "ecdsa-sha2-nistp256": ("nistp256", ec.SECP256R1(), hashes.SHA256),
    "ecdsa-sha2-nistp384": ("nistp384", ec.SECP384R1(), hashes.SHA384),
    "ecdsa-sha2-nistp521": ("nistp521", ec.SECP521R1(), hashes.SHA512),
}
#: cryptography curve name -> our key type.
_CURVE_BY_NAME = {curve.name: kt for kt, (_, curve, _h) in _ECDSA_CURVES.items()}


class ECDSAPublicKey(PublicKey):
    """``ecdsa-sha2-nistp*`` (RFC 5656 §3.1).

    Blob: ``string(key type) || string(curve id) || string(Q)``, ``Q`` an uncompressed
    point (SEC 1 §2.3.3). cryptography checks that the point is on the curve.
    """

    __slots__ = ("_key", "key_type")

    def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
        self._key = key
        self.key_type = _CURVE_BY_NAME[key.curve.name]  # type: ignore[misc]
        point = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        curve_id = _ECDSA_CURVES[self.key_type][0]
        self.blob = string(self.key_type) + string(curve_id) + string(point)

    @classmethod
    def _parse(cls, blob: bytes) -> ECDSAPublicKey:
        reader = Reader(blob)
        key_type = reader.string().decode("ascii")
        curve_id = reader.string()
        point = reader.string()
        reader.end()
        expected_id, curve, _ = _ECDSA_CURVES[key_type]
        if curve_id != expected_id.encode():
            raise DecodeError(f"{key_type} key names curve {curve_id[:32]!r}")
        # Only the uncompressed form (RFC 5656 §3.1), so the blob stays canonical.
        coord = (curve.key_size + 7) // 8
        if len(point) != 1 + 2 * coord or point[0] != 4:
            raise DecodeError(f"{key_type} public point is not an uncompressed point")
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        except ValueError:
            raise DecodeError(f"{key_type} public point is not on the curve") from None
        return cls(key)

    def _verify(self, algorithm: str, sig: bytes, data: bytes) -> bool:
        # RFC 5656 §3.1.2: the signature is mpint(r) || mpint(s).
        reader = Reader(sig)
        r = reader.mpint()
        s = reader.mpint()
        reader.end()
        if r <= 0 or s <= 0:
            return False
        hash_cls = _ECDSA_CURVES[self.key_type][2]
        self._key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hash_cls()))
        return True

    def to_cryptography(self) -> ec.EllipticCurvePublicKey:
        """The ``cryptography`` elliptic-curve public key."""
        return self._key


# --- parsing -----------------------------------------------------------------------

_PARSERS: dict[str, Callable[[bytes], PublicKey]] = {
    "ssh-ed25519": Ed25519PublicKey._parse,
    "ssh-rsa": RSAPublicKey._parse,
    **{kt: ECDSAPublicKey._parse for kt in _ECDSA_CURVES},
}


def register_key_type(key_type: str, parser: Callable[[bytes], PublicKey]) -> None:
    """Teach :func:`parse_public_key` another key type (certificates use this).

    Args:
        key_type: the leading string of blobs this parser handles.
        parser: called with the whole blob; returns a :class:`PublicKey` or raises
            :class:`DecodeError`.
    """
    _PARSERS[key_type] = parser


def parse_public_key(blob: bytes) -> PublicKey:
    """Parse a public-key blob as it appears on the wire.

    Args:
        blob: ``string(key type) || key-type-specific fields``.

    Returns:
        A :class:`PublicKey` of the matching subclass, whose ``blob`` is ``blob``.

    Raises:
        DecodeError: unknown key type, malformed or trailing data, an invalid point
            or key, or an RSA modulus outside [:data:`MIN_RSA_BITS`, :data:`MAX_RSA_BITS`].
    """
    blob = bytes(blob)
    try:
        key_type = Reader(blob).string().decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("key type is not ASCII") from None
    parser = _PARSERS.get(key_type)
    if parser is None:
        raise DecodeError(f"unknown public key type {key_type[:64]!r}")
    try:
        key = parser(blob)
    except DecodeError:
        raise
    except (ValueError, UnsupportedAlgorithm, UnicodeDecodeError) as exc:
        raise DecodeError(f"invalid {key_type} public key: {exc}") from None
    if key.blob != blob:  # defence in depth: every field must round-trip exactly
        raise DecodeError(f"{key_type} public key is not canonically encoded")
    return key


def public_key_from_line(line: str) -> PublicKey:
    """Parse the one-line OpenSSH form: ``"<type> <base64 blob> [comment]"``.

    Raises:
        KeyFormatError: the line is not of that form, the base64 is bad, the blob
            does not parse, or its key type differs from the first field.
    """
    fields = line.strip().split(None, 2)
    if len(fields) < 2:
        raise KeyFormatError("expected '<key type> <base64> [comment]'")
    try:
        blob = base64.b64decode(fields[1].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyFormatError("public key is not valid base64") from None
    try:
        key = parse_public_key(blob)
    except DecodeError as exc:
        raise KeyFormatError(f"bad public key: {exc.description}") from None
    if key.key_type != fields[0]:
        raise KeyFormatError(f"line says {fields[0][:64]!r} but the key is {key.key_type!r}")
    return key


# --- private keys ------------------------------------------------------------------


class PrivateKey:
    """A private key that makes SSH signature blobs.

    Wraps a ``cryptography`` private key; :attr:`public` is its :class:`PublicKey`.
    """

    __slots__ = ("_key", "public")

    def __init__(self, key: object, public: PublicKey) -> None:
        self._key = key
        self.public = public

    @classmethod
    def from_cryptography(cls, key: object) -> PrivateKey:
        """Wrap a ``cryptography`` Ed25519, RSA or ECDSA (P-256/384/521) private key.

        Raises:
            KeyFormatError: another key type or curve, or an RSA key outside
                [:data:`MIN_RSA_BITS`, :data:`MAX_RSA_BITS`].
        """
        if not isinstance(
            key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        ):
            raise KeyFormatError(f"unsupported private key type {type(key).__name__}")
        return cls(key, PublicKey.from_cryptography(key.public_key()))

    @classmethod
    def generate(cls, key_type: str = "ssh-ed25519", *, bits: int = DEFAULT_RSA_BITS) -> PrivateKey:
        """Make a new key with ``cryptography``'s own generator (the OS RNG).

        This is the one place in the sans-IO core that consumes OS randomness: key
        generation is a deliberate act by a driver or a tool, never a protocol step.

        Args:
            key_type: ``"ssh-ed25519"``, ``"ssh-rsa"`` or ``"ecdsa-sha2-nistp256/384/521"``.
            bits: RSA modulus size (at least :data:`MIN_RSA_BITS`).

        Raises:
            KeyFormatError: an unknown key type or a too-small RSA size.
        """
        key: object
        if key_type == "ssh-ed25519":
            key = ed25519.Ed25519PrivateKey.generate()
        elif key_type == "ssh-rsa":
            if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
                raise KeyFormatError(f"RSA keys must be {MIN_RSA_BITS}..{MAX_RSA_BITS} bits")
            key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        elif key_type in _ECDSA_CURVES:
            key = ec.generate_private_key(_ECDSA_CURVES[key_type][1])
        else:
            raise KeyFormatError(f"cannot generate key type {key_type!r}")
        return cls.from_cryptography(key)

    @classmethod
    def from_openssh(cls, data: bytes, password: bytes | None = None) -> PrivateKey:
        """Load an ``-----BEGIN OPENSSH PRIVATE KEY-----`` file (PROTOCOL.key).

        Raises:
            KeyFormatError: not a key file, wrong or missing password, unsupported type.
        """
        try:
            key = serialization.load_ssh_private_key(data, password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(f"cannot load OpenSSH private key: {exc}") from None
        return cls.from_cryptography(key)

    def to_openssh(self, password: bytes | None = None) -> bytes:
        """Serialise as an OpenSSH private key file, encrypted if ``password`` is set."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return self._key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
        )

    def to_cryptography(self) -> object:
        """The wrapped ``cryptography`` private key."""
        return self._key

    def sign(self, data: bytes, algorithm: str | None = None) -> bytes:
        """Sign ``data`` and return the SSH signature blob.

        Args:
            data: the bytes to sign (an exchange hash, a userauth request ...).
            algorithm: one of ``public.signature_algorithms()``; by default the key
                type itself, and ``rsa-sha2-512`` for RSA.

        Returns:
            ``string(algorithm) || string(signature)``.

        Raises:
            LocalProtocolError: ``algorithm`` does not belong to this key type.
        """
        algs = self.public.signature_algorithms()
        if algorithm is None:
            algorithm = algs[0]
        elif algorithm not in algs:
            raise LocalProtocolError(f"a {self.public.key_type} key cannot sign {algorithm!r}")
        key = self._key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            sig = key.sign(data)
        elif isinstance(key, rsa.RSAPrivateKey):
            sig = key.sign(data, padding.PKCS1v15(), _RSA_HASHES[algorithm]())
        else:
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            hash_cls = _ECDSA_CURVES[self.public.key_type][2]
            der = key.sign(data, ec.ECDSA(hash_cls(), deterministic_signing=True))
            r, s = decode_dss_signature(der)
            sig = mpint(r) + mpint(s)
        return string(algorithm) + string(sig)

    def __repr__(self) -> str:
        return f"<PrivateKey {self.public.key_type} {self.public.fingerprint()}>"
