"""The trio driver for :mod:`trioport.sshproto`: SSH over any trio stream.

- :func:`open_ssh` runs a connection over a stream in its own nursery.
- :func:`connect` dials, logs in and yields a client connection.
- :func:`serve` / :func:`handle` accept and serve server connections.
- :class:`ChannelStream` is a channel as a :class:`trio.abc.HalfCloseableStream`.
"""

from .channel import ChannelStream, StderrStream
from .client import KeySigner, Signer, authenticate, connect
from .connection import CompletedCommand, SSHConnection, SSHHandler, open_ssh
from .server import ServerLimits, handle, keepalive, serve

__all__ = [
    "ChannelStream",
    "CompletedCommand",
    "KeySigner",
    "SSHConnection",
    "SSHHandler",
    "ServerLimits",
    "Signer",
    "StderrStream",
    "authenticate",
    "connect",
    "handle",
    "keepalive",
    "open_ssh",
    "serve",
]
