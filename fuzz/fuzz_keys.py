"""Fuzz public key parsing: wire blobs (RFC 4253 §6.6) and ``*.pub`` files.

The first input byte picks the form: 0 (even) a blob for ``parse_public_key``, 1
(odd) the text of a ``.pub`` file for ``load_public_key_file``. A key that parses
must be canonical (its blob is exactly the input), must survive the way back
through its one-line form and its ``.pub`` file, and must answer ``False``, never
raise, to a signature it did not make.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _harness import main, tolerate_known_bugs

from trioport.errors import DecodeError, KeyFormatError
from trioport.sshproto import certs  # noqa: F401 - registers the certificate key types
from trioport.sshproto.keyfiles import (
    dump_public_key,
    fingerprint_line,
    key_bits,
    load_public_key_file,
)
from trioport.sshproto.keys import PublicKey, parse_public_key, public_key_from_line

_JUNK_SIGNATURES = (b"", b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x40" + bytes(64))


def _exercise(key: PublicKey) -> None:
    again = parse_public_key(key.blob)
    if again != key or again.blob != key.blob:
        raise AssertionError(f"{key!r} does not parse back from its own blob")
    if public_key_from_line(key.openssh_line("c")) != key:
        raise AssertionError(f"{key!r} does not parse back from its one-line form")
    loaded, comment = load_public_key_file(dump_public_key(key, "fuzz comment"))
    if loaded != key or comment != "fuzz comment":
        raise AssertionError(f"{key!r} does not survive its .pub file")
    fingerprint_line(key, "x")
    key_bits(key)
    for algorithm in key.signature_algorithms():
        for signature in _JUNK_SIGNATURES:
            if key.verify(signature, b"data", allowed=(algorithm,)) is not False:
                raise AssertionError(f"{key!r} accepted a junk signature")


def check(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    if data[0] & 1:
        try:
            key, _ = load_public_key_file(body)
        except KeyFormatError:
            return
    else:
        try:
            key = parse_public_key(body)
        except DecodeError:
            return
        if key.blob != body:
            raise AssertionError("parse_public_key kept a blob other than its input")
    _exercise(key)


TestOneInput = tolerate_known_bugs("keys", check)

if __name__ == "__main__":
    main(TestOneInput, "keys", instrument=("trioport",))
