"""Fuzz private key files (``openssh-key-v1``, PEM, PKCS#8) and the private-key codec.

The first input byte: bit 0 supplies the passphrase, bit 1 also asks
``is_encrypted``, bit 2 reads the rest as the OpenSSH private-key *wire* encoding
(what ``SSH_AGENTC_ADD_IDENTITY`` carries) instead of a file. KDF rounds are capped
at 2 so one input costs milliseconds, as ``max_kdf_rounds`` promises.

Invariant: a file loads or raises ``KeyFormatError``; the wire codec decodes or
raises ``DecodeError``. What loads survives being written and read back.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _fixtures import PASSPHRASE
from _harness import main, tolerate_known_bugs

from trioport.errors import DecodeError, KeyFormatError
from trioport.sshproto.keyfiles import (
    decode_private_key,
    dump_private_key,
    encode_private_key,
    is_encrypted,
    load_private_key_and_comment,
)
from trioport.sshproto.wire import Reader

MAX_ROUNDS = 2


def _codec(body: bytes) -> None:
    reader = Reader(body)
    try:
        key, cert = decode_private_key(reader)
    except DecodeError:
        return
    again, again_cert = decode_private_key(Reader(encode_private_key(key, cert)))
    if again.public != key.public or again_cert != cert:
        raise AssertionError("a decoded private key does not survive re-encoding")


def check(data: bytes) -> None:
    if not data:
        return
    selector, body = data[0], data[1:]
    if selector & 4:
        _codec(body)
        return
    passphrase = PASSPHRASE if selector & 1 else None
    if selector & 2:
        try:
            encrypted = is_encrypted(body)
        except KeyFormatError:
            pass
        else:
            if encrypted is not True and encrypted is not False:
                raise AssertionError(f"is_encrypted returned {encrypted!r}")
    try:
        key, comment = load_private_key_and_comment(body, passphrase, max_kdf_rounds=MAX_ROUNDS)
    except KeyFormatError:
        return
    # Written back unencrypted: our own bcrypt writer needs no fuzzing, and it costs.
    again, again_comment = load_private_key_and_comment(dump_private_key(key, comment=comment))
    if again.public != key.public or again_comment != comment:
        raise AssertionError("a loaded key does not survive being written and read back")


TestOneInput = tolerate_known_bugs("keyfiles", check)

if __name__ == "__main__":
    main(TestOneInput, "keyfiles", instrument=("trioport",))
