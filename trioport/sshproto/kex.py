"""Key exchange methods, the exchange hash, and key derivation.

Theory of operation
-------------------
Every method here is a one-round exchange over SSH_MSG_KEX_ECDH_INIT (30) and
SSH_MSG_KEX_ECDH_REPLY (31): the client sends Q_C, the server answers Q_S with its
host key and a signature over the exchange hash H, and both compute the shared
secret K. This module does the arithmetic only; the transport owns messages, host
keys and signatures.

- client: ``kc = KexClient(method, rng)``; send ``kc.client_public()``; on the reply
  ``k = kc.finish(q_s)``.
- server: ``q_s, k = kex_server(method, q_c, rng)``.
- both: ``h = exchange_hash(method, ...)``; the first H is the session id; keys come
  from ``derive_key(method, k, h, session_id, b"A" ... b"F", size)``.

K is returned *already wire-encoded*, because its encoding differs by method: an
mpint for curve25519 (RFC 8731 §3.1) and ECDH (RFC 5656 §4), a string for the
ML-KEM hybrid (draft-ietf-sshm-mlkem-hybrid-kex). Both the exchange hash and the
key derivation use that encoding verbatim, so callers never need to know.

Rules:

- Every bad peer value (wrong length, a point not on the curve, a compressed point,
  an all-zero X25519 result) raises :class:`~trioport.errors.KeyExchangeFailed`.
- Ephemeral private keys come from the injected ``rng``, so a fixed rng replays a
  client's exchange byte for byte. One exception: ``cryptography`` offers no
  derandomised ML-KEM encapsulation, so the server's ML-KEM ciphertext (and with it
  K for mlkem768x25519-sha256) uses the library's own OS-seeded RNG.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519

from ..errors import KeyExchangeFailed, LocalProtocolError
from .wire import mpint, string

__all__ = [
    "DEFAULT_KEX_METHODS",
    "KEX_METHODS",
    "KexClient",
    "KexSpec",
    "derive_key",
    "exchange_hash",
    "kex_server",
]


@dataclass(frozen=True, slots=True)
class KexSpec:
    """What the transport needs to know about a key exchange method."""

    #: hashlib name of HASH for the exchange hash and key derivation.
    hash_name: str
    #: ``"x25519"``, ``"ecdh"`` or ``"mlkem768x25519"``: which arithmetic runs.
    kind: str
    #: cryptography curve for ``"ecdh"`` (None otherwise).
    curve: ec.EllipticCurve | None = None


#: Every method we implement, by its KEXINIT name.
KEX_METHODS: dict[str, KexSpec] = {
    # draft-ietf-sshm-mlkem-hybrid-kex; OpenSSH 9.9+ (default in 10.0).
    "mlkem768x25519-sha256": KexSpec("sha256", "mlkem768x25519"),
    # RFC 8731 (the @libssh.org name is the same method, pre-standard).
    "curve25519-sha256": KexSpec("sha256", "x25519"),
    "curve25519-sha256@libssh.org": KexSpec("sha256", "x25519"),
    # RFC 5656 §6.2.1: the hash follows the curve size.
    "ecdh-sha2-nistp256": KexSpec("sha256", "ecdh", ec.SECP256R1()),
    "ecdh-sha2-nistp384": KexSpec("sha384", "ecdh", ec.SECP384R1()),
    "ecdh-sha2-nistp521": KexSpec("sha512", "ecdh", ec.SECP521R1()),
}

#: What we offer, best first (post-quantum hybrid first, as OpenSSH 10 does).
DEFAULT_KEX_METHODS: tuple[str, ...] = tuple(KEX_METHODS)

_X25519_SIZE = 32
_MLKEM768_PUBLIC_SIZE = 1184  # FIPS 203 Table 3: encapsulation key
_MLKEM768_CIPHERTEXT_SIZE = 1088  # FIPS 203 Table 3: ciphertext
_MLKEM_SEED_SIZE = 64  # FIPS 203 §7.1: d || z

#: Group orders (SEC 2 §2.4), used to turn rng bytes into a private scalar.
_CURVE_ORDERS = {
    "secp256r1": int(
        "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551",
        16,
    ),
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
        "581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "secp521r1": int(
        "01FF" + "FFFFFFFF" * 7 + "FFFFFFFA"
        "51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}


def _spec(method: str) -> KexSpec:
    spec = KEX_METHODS.get(method)
    if spec is None:
        raise LocalProtocolError(f"unknown key exchange method {method!r}")
    return spec


# --- X25519 (RFC 8731 §3) --------------------------------------------------------------


def _x25519_private(rng: Callable[[int], bytes]) -> x25519.X25519PrivateKey:
    # RFC 7748 §5: any 32 bytes are a valid private key (clamping is internal).
    return x25519.X25519PrivateKey.from_private_bytes(rng(_X25519_SIZE))


def _x25519_public(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _x25519_shared(key: x25519.X25519PrivateKey, peer: bytes) -> bytes:
    """The raw 32-byte X25519 result, refusing bad peer values (RFC 8731 §3)."""
    if len(peer) != _X25519_SIZE:
        raise KeyExchangeFailed(f"X25519 public value is {len(peer)} bytes, not 32")
    try:
        shared = key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
    except ValueError:  # OpenSSL refuses the all-zero result of a low-order point
        raise KeyExchangeFailed("X25519 shared secret is all zero") from None
    # RFC 8731 §3: "MUST check whether the computed secret is the all-zero value".
    if shared == bytes(_X25519_SIZE):
        raise KeyExchangeFailed("X25519 shared secret is all zero")
    return shared


def _as_mpint(shared: bytes) -> bytes:
    # RFC 8731 §3.1 and RFC 5656 §4: the octets are an unsigned big-endian integer,
    # encoded as an mpint (so leading zeros are dropped and a sign byte may appear).
    return mpint(int.from_bytes(shared, "big"))


# --- ECDH on NIST curves (RFC 5656 §4) -------------------------------------------------


def _ecdh_private(
    curve: ec.EllipticCurve, rng: Callable[[int], bytes]
) -> ec.EllipticCurvePrivateKey:
    # FIPS 186-5 A.2.1 ("extra random bits"): 64 more bits than the order, reduced
    # into [1, n-1]; the bias is below 2^-64.
    order = _CURVE_ORDERS[curve.name]
    c = int.from_bytes(rng((order.bit_length() + 7) // 8 + 8), "big")
    return ec.derive_private_key(c % (order - 1) + 1, curve)


def _ecdh_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _ecdh_shared(key: ec.EllipticCurvePrivateKey, peer: bytes) -> bytes:
    curve = key.curve
    coord = (curve.key_size + 7) // 8
    # SEC 1 §2.3.3 uncompressed form only, as OpenSSH requires.
    if len(peer) != 1 + 2 * coord or peer[0] != 4:
        raise KeyExchangeFailed(f"ECDH public value is not an uncompressed {curve.name} point")
    try:
        # RFC 5656 §4: validate the peer's point (cryptography checks it is on the curve).
        point = ec.EllipticCurvePublicKey.from_encoded_point(curve, peer)
        return key.exchange(ec.ECDH(), point)
    except ValueError:
        raise KeyExchangeFailed(f"ECDH public value is not a point on {curve.name}") from None


# --- ML-KEM-768 + X25519 hybrid (draft-ietf-sshm-mlkem-hybrid-kex §2.1-2.4) ------------


def _hybrid_k(pq_secret: bytes, classical_secret: bytes) -> bytes:
    # K = HASH(K_PQ || K_CL), encoded as a string (not an mpint).
    return string(hashlib.sha256(pq_secret + classical_secret).digest())


class KexClient:
    """The client half of one key exchange.

    Draws its ephemeral keys from ``rng`` when created: for the hybrid 64 bytes of
    ML-KEM seed then 32 bytes of X25519 key; 32 bytes for curve25519; the scalar
    size plus 8 bytes for ECDH.

    Args:
        method: a key of :data:`KEX_METHODS`.
        rng: the randomness source.

    Raises:
        LocalProtocolError: unknown method.
    """

    __slots__ = ("_ec", "_mlkem", "_public", "_x25519", "method", "spec")

    def __init__(self, method: str, rng: Callable[[int], bytes]) -> None:
        self.method = method
        self.spec = spec = _spec(method)
        self._mlkem: mlkem.MLKEM768PrivateKey | None = None
        self._x25519: x25519.X25519PrivateKey | None = None
        self._ec: ec.EllipticCurvePrivateKey | None = None
        if spec.kind == "ecdh":
            assert spec.curve is not None
            self._ec = _ecdh_private(spec.curve, rng)
            self._public = _ecdh_public(self._ec)
            return
        if spec.kind == "mlkem768x25519":
            self._mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(rng(_MLKEM_SEED_SIZE))
        self._x25519 = _x25519_private(rng)
        self._public = _x25519_public(self._x25519)
        if self._mlkem is not None:
            # C_INIT = C_PK2 (ML-KEM encapsulation key) || C_PK1 (X25519 public).
            self._public = self._mlkem.public_key().public_bytes_raw() + self._public

    def client_public(self) -> bytes:
        """Q_C, the value for SSH_MSG_KEX_ECDH_INIT (30)."""
        return self._public

    def finish(self, server_public: bytes) -> bytes:
        """Compute K from the server's Q_S.

        Args:
            server_public: Q_S from SSH_MSG_KEX_ECDH_REPLY (31).

        Returns:
            K, wire-encoded (mpint, or string for the ML-KEM hybrid).

        Raises:
            KeyExchangeFailed: Q_S has the wrong length, is not a valid point, or
                gives an all-zero X25519 secret.
        """
        server_public = bytes(server_public)
        if self._ec is not None:
            return _as_mpint(_ecdh_shared(self._ec, server_public))
        assert self._x25519 is not None
        if self._mlkem is None:
            return _as_mpint(_x25519_shared(self._x25519, server_public))
        # S_REPLY = S_CT2 (ML-KEM ciphertext) || S_PK1 (X25519 public).
        if len(server_public) != _MLKEM768_CIPHERTEXT_SIZE + _X25519_SIZE:
            raise KeyExchangeFailed(
                f"mlkem768x25519 reply is {len(server_public)} bytes, "
                f"not {_MLKEM768_CIPHERTEXT_SIZE + _X25519_SIZE}"
            )
        ciphertext = server_public[:_MLKEM768_CIPHERTEXT_SIZE]
        # FIPS 203 decapsulation never fails on a right-sized ciphertext: a forged
        # one yields an unrelated secret (implicit rejection), caught by the signature.
        pq_secret = self._mlkem.decapsulate(ciphertext)
        classical = _x25519_shared(self._x25519, server_public[_MLKEM768_CIPHERTEXT_SIZE:])
        return _hybrid_k(pq_secret, classical)


def kex_server(
    method: str, client_public: bytes, rng: Callable[[int], bytes]
) -> tuple[bytes, bytes]:
    """The server half of one key exchange.

    Args:
        method: a key of :data:`KEX_METHODS`.
        client_public: Q_C from SSH_MSG_KEX_ECDH_INIT.
        rng: the randomness source for the server's ephemeral key.

    Returns:
        ``(Q_S, K)``: the value for SSH_MSG_KEX_ECDH_REPLY and K, wire-encoded.

    Raises:
        KeyExchangeFailed: Q_C has the wrong length or is not a valid public value.
        LocalProtocolError: unknown method.
    """
    spec = _spec(method)
    client_public = bytes(client_public)
    if spec.kind == "ecdh":
        assert spec.curve is not None
        key = _ecdh_private(spec.curve, rng)
        return _ecdh_public(key), _as_mpint(_ecdh_shared(key, client_public))
    if spec.kind == "x25519":
        xkey = _x25519_private(rng)
        return _x25519_public(xkey), _as_mpint(_x25519_shared(xkey, client_public))
    # mlkem768x25519: C_INIT = ML-KEM encapsulation key (1184) || X25519 public (32).
    if len(client_public) != _MLKEM768_PUBLIC_SIZE + _X25519_SIZE:
        raise KeyExchangeFailed(
            f"mlkem768x25519 init is {len(client_public)} bytes, "
            f"not {_MLKEM768_PUBLIC_SIZE + _X25519_SIZE}"
        )
    try:
        # FIPS 203 §7.2 input checking (the modulus check) happens on load.
        encapsulation_key = mlkem.MLKEM768PublicKey.from_public_bytes(
            client_public[:_MLKEM768_PUBLIC_SIZE]
        )
    except ValueError:
        raise KeyExchangeFailed("ML-KEM-768 encapsulation key is invalid") from None
    xkey = _x25519_private(rng)
    classical = _x25519_shared(xkey, client_public[_MLKEM768_PUBLIC_SIZE:])
    # cryptography's encapsulate() draws its randomness from the OS itself.
    pq_secret, ciphertext = encapsulation_key.encapsulate()
    return ciphertext + _x25519_public(xkey), _hybrid_k(pq_secret, classical)


# --- exchange hash and key derivation ----------------------------------------------------


def exchange_hash(
    method: str,
    *,
    v_c: bytes,
    v_s: bytes,
    i_c: bytes,
    i_s: bytes,
    k_s: bytes,
    q_c: bytes,
    q_s: bytes,
    k: bytes,
) -> bytes:
    """The exchange hash H (RFC 5656 §4, RFC 8731 §3, RFC 4253 §8 for the shape).

    ``H = HASH(string V_C || string V_S || string I_C || string I_S || string K_S ||
    string Q_C || string Q_S || K)``, with K already encoded.

    Args:
        method: a key of :data:`KEX_METHODS` (chooses HASH).
        v_c: the client's version line, without CR LF.
        v_s: the server's version line, without CR LF.
        i_c: the payload of the client's SSH_MSG_KEXINIT (from the message byte).
        i_s: the payload of the server's SSH_MSG_KEXINIT.
        k_s: the server's host key (or certificate) blob.
        q_c: the client's ephemeral public value.
        q_s: the server's ephemeral public value.
        k: the shared secret as returned by :meth:`KexClient.finish` or :func:`kex_server`.

    Returns:
        H, whose size is the hash's digest size.

    Raises:
        LocalProtocolError: unknown method.
    """
    h = hashlib.new(_spec(method).hash_name)
    for field in (v_c, v_s, i_c, i_s, k_s, q_c, q_s):
        h.update(string(field))
    h.update(k)
    return h.digest()


def derive_key(
    method: str, k: bytes, h: bytes, session_id: bytes, letter: bytes, size: int
) -> bytes:
    """One of the six keys (RFC 4253 §7.2).

    ``K1 = HASH(K || H || letter || session_id)``, ``Kn = HASH(K || H || K1 || ... ||
    Kn-1)``, and the key is the first ``size`` bytes of ``K1 || K2 || ...``.

    Args:
        method: a key of :data:`KEX_METHODS` (chooses HASH).
        k: the shared secret, wire-encoded as returned by this module.
        h: this exchange's hash.
        session_id: the first exchange hash of the connection.
        letter: ``b"A"`` .. ``b"F"`` (IVs, encryption keys, MAC keys; c2s then s2c).
        size: bytes wanted.

    Returns:
        ``size`` bytes of key material.

    Raises:
        LocalProtocolError: unknown method, a bad letter, or a negative size.
    """
    if len(letter) != 1 or letter not in b"ABCDEF" or size < 0:
        raise LocalProtocolError(f"bad key derivation request {letter!r}, {size}")
    hash_name = _spec(method).hash_name
    prefix = hashlib.new(hash_name, k)
    prefix.update(h)
    first = prefix.copy()
    first.update(letter)
    first.update(session_id)
    out = first.digest()
    while len(out) < size:
        more = prefix.copy()
        more.update(out)
        out += more.digest()
    return out[:size]
