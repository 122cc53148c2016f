"""Fixed key material, time and randomness shared by the fuzz targets.

Everything a target needs besides the fuzz input is loaded from files committed in
``fuzz/keys/`` (made once with ``ssh-keygen``; test-only keys, never used anywhere
else) or derived from fixed seeds, so a crashing input replays exactly, on any
machine, years later: the certificates are checked at :data:`NOW`, not at the
wall-clock time.
"""

from __future__ import annotations

import hashlib
import itertools
import pathlib
from collections.abc import Callable

from trioport.sshproto import certs
from trioport.sshproto.keyfiles import load_private_key, load_public_key_file
from trioport.sshproto.keys import PrivateKey, PublicKey

KEYS = pathlib.Path(__file__).resolve().parent / "keys"

#: The time every certificate check uses: 2023-11-14, inside the validity window
#: ``ssh-keygen -V 20200101:20400101`` gave the committed certificates.
NOW = 1_700_000_000.0
#: The passphrase of every encrypted key file in the keyfiles corpus.
PASSPHRASE = b"fuzz"
#: The password the fuzz SSH servers accept (and the keyboard-interactive answer).
PASSWORD = "fuzz"
#: The host name the host certificate is for, and the user the user certificate is for.
HOST_NAME = "fuzz.example"
USER_NAME = "alice"
#: The address the fuzz SSH server says the client connects from (the user
#: certificate carries ``source-address=127.0.0.0/8,::1``).
PEER_ADDRESS = "127.0.0.1"


def make_rng(seed: bytes | str) -> Callable[[int], bytes]:
    """A deterministic ``rng(n)``: SHA-256 in counter mode over ``seed``."""
    if isinstance(seed, str):
        seed = seed.encode()
    counter = itertools.count()

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + next(counter).to_bytes(8, "big")).digest()
        return out[:n]

    return rng


def _private(name: str) -> PrivateKey:
    return load_private_key((KEYS / name).read_bytes())


def _public(name: str) -> PublicKey:
    return load_public_key_file((KEYS / name).read_bytes())[0]


HOST_ED25519 = _private("host_ed25519")
HOST_ECDSA = _private("host_ecdsa")
HOST_RSA = _private("host_rsa")
USER_ED25519 = _private("user_ed25519")
CA = _private("ca_ed25519")
#: A host certificate for :data:`HOST_ED25519` (principals ``fuzz.example``,
#: ``*.fuzz.example``) and a user certificate for :data:`USER_ED25519` (principal
#: ``alice``, ``source-address=127.0.0.0/8,::1``), both signed by :data:`CA`.
HOST_CERT = _public("host_ed25519-cert.pub")
USER_CERT = _public("user_ed25519-cert.pub")
assert isinstance(HOST_CERT, certs.Certificate) and isinstance(USER_CERT, certs.Certificate)
