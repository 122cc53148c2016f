"""The client side of the trio driver: connect, authenticate, run commands.

A *signer* is anything that holds a public key (or certificate) and can sign the
RFC 4252 §7 authentication data, possibly asynchronously: a private key in
memory (:class:`KeySigner`) or a key held by an ssh-agent. The connection core
hands out the bytes to sign, so the private key never has to be in this process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from ..errors import AuthenticationFailed
from ..sshproto import ConnectionConfig, Role
from ..sshproto import events as ev
from ..sshproto.keys import PrivateKey, signature_algorithm_for
from .connection import SSHConnection, SSHHandler, open_ssh

__all__ = ["KeySigner", "Signer", "authenticate", "connect"]


class Signer(Protocol):
    """A key usable for publickey authentication."""

    #: The public key or certificate blob offered to the server.
    public_blob: bytes
    #: The publickey algorithm name ("ssh-ed25519", "rsa-sha2-512-cert-v01@openssh.com", ...).
    algorithm: str

    async def sign(self, data: bytes) -> bytes:
        """Return an SSH signature blob over ``data``."""
        ...


class KeySigner:
    """A private key in memory, optionally presented with its certificate."""

    def __init__(
        self, key: PrivateKey, certificate: bytes | None = None, algorithm: str | None = None
    ) -> None:
        self.key = key
        self.public_blob = certificate if certificate is not None else key.public.blob
        if algorithm is None:
            algorithm = key.public.signature_algorithms()[0]
            if certificate is not None:
                algorithm = _cert_algorithm(algorithm)
        self.algorithm = algorithm

    async def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, signature_algorithm_for(self.algorithm))


def _cert_algorithm(signature_algorithm: str) -> str:
    # PROTOCOL.certkeys: RSA certificates are offered under the rsa-sha2-* names.
    return f"{signature_algorithm}-cert-v01@openssh.com"


async def authenticate(
    conn: SSHConnection,
    username: str,
    *,
    signers: Sequence[Signer | PrivateKey] = (),
    password: str | None = None,
) -> None:
    """Log in as ``username`` with each key in turn, then the password.

    Raises:
        AuthenticationFailed: the server accepted none of them.
        trio.BrokenResourceError: the connection ended.
    """
    await conn.wait_kex()
    tried: list[str] = []
    for signer in signers:
        if isinstance(signer, PrivateKey):
            signer = KeySigner(signer)
        data = conn.publickey_data_to_sign(username, signer.algorithm, signer.public_blob)
        signature = await signer.sign(data)
        await conn.send_event(
            ev.UserauthRequest(
                username=username,
                method="publickey",
                public_key=signer.public_blob,
                algorithm=signer.algorithm,
                signature=signature,
            )
        )
        if await _auth_result(conn):
            return
        tried.append("publickey")
    if password is not None:
        await conn.send_event(
            ev.UserauthRequest(username=username, method="password", password=password)
        )
        if await _auth_result(conn):
            return
        tried.append("password")
    methods = ",".join(dict.fromkeys(tried)) or "none"
    raise AuthenticationFailed(f"{username}: permission denied ({methods})")


async def _auth_result(conn: SSHConnection) -> bool:
    while True:
        reply = await conn.next_auth_event()
        if isinstance(reply, ev.UserauthSuccess):
            return True
        if isinstance(reply, ev.UserauthFailure):
            return False
        # PK_OK only answers queries, which we do not send; info requests belong
        # to keyboard-interactive, which we do not start. Ignore anything else.


@asynccontextmanager
async def connect(
    host: str,
    port: int = 22,
    *,
    username: str,
    signers: Sequence[Signer | PrivateKey] = (),
    password: str | None = None,
    config: ConnectionConfig | None = None,
    handler: SSHHandler | None = None,
    stream: trio.abc.Stream | None = None,
    connect_timeout: float = 30.0,
) -> AsyncIterator[SSHConnection]:
    """Connect to ``host:port`` (or over ``stream``), log in, and yield the connection.

    ``config.verify_host_key`` decides whether the server's host key is trusted.
    """
    if config is None:
        config = ConnectionConfig(role=Role.CLIENT)
    if stream is None:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
    async with open_ssh(stream, config, handler) as conn:
        with trio.fail_after(connect_timeout):
            await authenticate(conn, username, signers=signers, password=password)
        yield conn
