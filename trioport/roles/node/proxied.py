"""The node's side of the proxy line: read it off a new connection before SSH does.

:class:`ProxyLineListener` wraps the node's listening sockets; each accepted
connection is a :class:`ProxiedStream`. The SSH server uses it as any stream: it
sends its identification at once (so clients that wait for the server, like
``ssh-keyscan``, are served as before), and its first read makes the stream look
at what the client sent first:

- ``SSH-...`` (or anything that is not the start of a proxy line): plain SSH, the
  bytes are handed on untouched and :attr:`ProxiedStream.client_addr` stays None;
- ``TRIOPORT-PROXY ...``: the line is read (at most
  :data:`~.proxyline.MAX_LINE` bytes; the SSH server's login grace bounds the
  time) and checked (:func:`.proxyline.verify`). Accepted, the client's address
  is :attr:`ProxiedStream.client_addr` and SSH goes on with the bytes after the
  line. Refused, the node writes an SSH ``DISCONNECT`` (reason 1, "host not
  allowed to connect") with the reason, which OpenSSH prints ("Received
  disconnect from ...: the proxy line's signature does not verify"), logs it as
  a warning with the address it came from, reports it (the node makes it an
  ``auth`` audit event, ``method: proxy-line``), and closes the connection.

The DISCONNECT is an unencrypted binary packet (RFC 4253 §6 with no cipher and
no MAC, §11.1 for the message): nothing of the key exchange can have happened
yet, since the client's first bytes come after the line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import trio

from trioport.errors import DisconnectReason
from trioport.ssh.prefixed import PrefixedStream
from trioport.sshproto.wire import byte, string, uint32

from . import proxyline

__all__ = ["ProxiedStream", "ProxyLineListener", "disconnect_packet"]

log = logging.getLogger("trioport.node.proxied")

#: SSH_MSG_DISCONNECT (RFC 4253 §12).
_MSG_DISCONNECT = 1
_READ = 65536


def disconnect_packet(
    reason: str, code: int = DisconnectReason.HOST_NOT_ALLOWED_TO_CONNECT
) -> bytes:
    """An unencrypted SSH_MSG_DISCONNECT binary packet (RFC 4253 §6, §11.1)."""
    payload = (
        byte(_MSG_DISCONNECT)
        + uint32(int(code))
        + string(reason.encode("utf-8", "replace")[:1024])
        + string(b"")
    )
    # §6: 4 to 255 bytes of padding; length fields and payload a multiple of 8.
    padding = 8 - (5 + len(payload)) % 8
    if padding < 4:
        padding += 8
    body = byte(padding) + payload + os.urandom(padding)
    return uint32(len(body)) + body


class ProxiedStream(PrefixedStream):
    """A node connection that may start with a proxy line (see the module).

    Args:
        stream: the accepted TCP connection.
        verify: turns a proxy line into the client's address, or raises
            :class:`~.proxyline.ProxyLineRefused`.
        on_refused: called with the peer's address and the reason when a line
            is refused (the node audits it).
    """

    def __init__(
        self,
        stream: trio.abc.HalfCloseableStream,
        verify: Callable[[bytes], str],
        on_refused: Callable[[str, str], object] | None = None,
    ) -> None:
        super().__init__(stream)  # the bytes read past a proxy line are the prefix
        self._on_refused = on_refused
        self._verify = verify
        #: The client's address from an accepted proxy line (None: none was sent).
        self.client_addr: str | None = None
        self._checked = False
        self._refused: str | None = None
        self._send_lock = trio.Lock()

    async def _read_more(self) -> bool:
        """Add what arrives to the pending bytes; False at EOF. Kept in the object,
        so a read cancelled half-way (the SSH driver's timers) loses nothing."""
        data = await self.stream.receive_some(_READ)
        self._prefix += data
        return bool(data)

    async def _check(self) -> None:
        magic = proxyline.MAGIC
        while len(self._prefix) < len(magic) and magic.startswith(self._prefix):
            if not await self._read_more():
                break
        if not self._prefix.startswith(magic):
            self._checked = True
            return
        while b"\n" not in self._prefix[: proxyline.MAX_LINE]:
            if len(self._prefix) >= proxyline.MAX_LINE:
                await self._refuse(f"the proxy line is longer than {proxyline.MAX_LINE} bytes")
            if not await self._read_more():
                await self._refuse("the connection ended inside the proxy line")
        end = self._prefix.index(b"\n") + 1
        try:
            self.client_addr = self._verify(self._prefix[:end])
        except proxyline.ProxyLineRefused as exc:
            await self._refuse(str(exc))
        self._prefix = self._prefix[end:]
        self._checked = True

    async def _refuse(self, reason: str) -> None:
        peer = _peer(self.socket)
        self._refused = f"refused the proxy line from {peer}: {reason}"
        log.warning("refused a proxy line from %s: %s", peer, reason)
        if self._on_refused is not None:
            self._on_refused(peer, reason)
        message = f"trioport node: refused the proxy line: {reason}"
        async with self._send_lock:
            try:
                await self.stream.send_all(disconnect_packet(message))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await trio.aclose_forcefully(self.stream)
        raise trio.BrokenResourceError(self._refused)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._refused is not None:
            raise trio.BrokenResourceError(self._refused)
        if not self._checked:
            await self._check()
        return await super().receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:  # never interleaved with a refusal's DISCONNECT
            await self.stream.send_all(data)


def _peer(sock: object) -> str:
    try:
        host, port = sock.getpeername()[:2]  # type: ignore[attr-defined]
    except (OSError, AttributeError, ValueError):
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class ProxyLineListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are :class:`ProxiedStream`\\ s.

    Args:
        listener: the listening socket.
        verify, on_refused: see :class:`ProxiedStream`.
    """

    def __init__(
        self,
        listener: trio.SocketListener,
        verify: Callable[[bytes], str],
        on_refused: Callable[[str, str], object] | None = None,
    ) -> None:
        self.listener = listener
        #: The listening socket (the SSH server reads its address).
        self.socket = listener.socket
        self._verify = verify
        self._on_refused = on_refused

    async def accept(self) -> ProxiedStream:
        return ProxiedStream(await self.listener.accept(), self._verify, self._on_refused)

    async def aclose(self) -> None:
        await self.listener.aclose()
