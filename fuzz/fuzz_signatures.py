"""Fuzz signature checking: ``PublicKey.verify`` with arbitrary signature blobs.

The first input byte picks the key (Ed25519, ECDSA on each curve, RSA, and a user
certificate, which verifies as its key) and what the caller allows; the rest is
the signature blob. ``verify`` must answer ``True`` or ``False`` and never raise.
It may answer ``True`` only for a real signature by that key over the fixed
message: for Ed25519 and RSA (deterministic signatures) that is exactly the blob
the key makes itself, modulo the leading zero bytes OpenSSH lets an RSA signer
strip; for ECDSA, a blob that the key's own ``verify`` through ``cryptography``
also accepts.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _fixtures import HOST_ECDSA, HOST_RSA, USER_CERT, USER_ED25519
from _harness import main, tolerate_known_bugs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from trioport.sshproto.keys import PrivateKey, PublicKey
from trioport.sshproto.wire import Reader

#: The message every seed signature signs.
MESSAGE = b"trioport fuzz: the signed message"


def _ecdsa(curve: ec.EllipticCurve, scalar: int) -> PrivateKey:
    return PrivateKey.from_cryptography(ec.derive_private_key(scalar, curve))


ECDSA_384 = _ecdsa(ec.SECP384R1(), 0x5EED_384)
ECDSA_521 = _ecdsa(ec.SECP521R1(), 0x5EED_521)
#: (private key, the public key verify is called on), by the low 3 bits of byte 0.
KEYS: tuple[tuple[PrivateKey, PublicKey], ...] = (
    (USER_ED25519, USER_ED25519.public),
    (HOST_ECDSA, HOST_ECDSA.public),
    (ECDSA_384, ECDSA_384.public),
    (ECDSA_521, ECDSA_521.public),
    (HOST_RSA, HOST_RSA.public),
    (USER_ED25519, USER_CERT),
    (HOST_RSA, HOST_RSA.public),
    (USER_ED25519, USER_ED25519.public),
)
_HASHES = {
    "ecdsa-sha2-nistp256": hashes.SHA256,
    "ecdsa-sha2-nistp384": hashes.SHA384,
    "ecdsa-sha2-nistp521": hashes.SHA512,
}


def _allowed(selector: int, key: PublicKey) -> tuple[str, ...] | None:
    """Bits 3-4 of byte 0: the default, every algorithm, the first, or ssh-rsa."""
    choice = selector >> 3 & 3
    if choice == 0:
        return None
    if choice == 1:
        return key.signature_algorithms()
    if choice == 2:
        return key.signature_algorithms()[:1]
    return ("ssh-rsa",)


def _genuine(private: PrivateKey, signature: bytes) -> bool:
    """Whether ``signature`` is a real signature by ``private`` over MESSAGE."""
    r = Reader(signature)
    algorithm = r.string().decode("ascii")
    sig = r.string()
    key_type = private.public.key_type
    if key_type in _HASHES:
        point = Reader(sig)
        der = encode_dss_signature(point.mpint(), point.mpint())
        try:
            private.public.to_cryptography().verify(der, MESSAGE, ec.ECDSA(_HASHES[key_type]()))
        except InvalidSignature:
            return False
        return True
    mine = Reader(private.sign(MESSAGE, algorithm))
    mine.string()
    expected = mine.string()
    if key_type == "ssh-rsa":
        return sig.lstrip(b"\x00") == expected.lstrip(b"\x00")
    return sig == expected


def check(data: bytes) -> None:
    if not data:
        return
    private, public = KEYS[data[0] & 7]
    signature = data[1:]
    result = public.verify(signature, MESSAGE, allowed=_allowed(data[0], public))
    if result is not True and result is not False:
        raise AssertionError(f"verify returned {result!r}, not a bool")
    if result and not _genuine(private, signature):
        raise AssertionError(f"{public!r} accepted a signature it did not make")


TestOneInput = tolerate_known_bugs("signatures", check)

if __name__ == "__main__":
    main(TestOneInput, "signatures", instrument=("trioport",))
