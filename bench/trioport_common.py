"""trioport pieces shared by the trioport server and client scripts of the benchmark."""

from __future__ import annotations

import pathlib

from cryptography.hazmat.primitives import serialization

from trioport.sshproto.keys import PrivateKey


def load_key(path: str | pathlib.Path) -> PrivateKey:
    """An unencrypted OpenSSH private key file, as trioport's key type."""
    data = pathlib.Path(path).read_bytes()
    return PrivateKey.from_cryptography(serialization.load_ssh_private_key(data, None))
