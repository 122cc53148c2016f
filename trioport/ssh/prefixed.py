"""A stream whose first bytes were already read: they are returned first.

Both ends of the proxy-to-node hop read ahead before SSH takes over (the proxy
reads the node's identification line, the node looks for a proxy line), and then
hand the connection to code that must see every byte from the start.
"""

from __future__ import annotations

import trio

__all__ = ["PrefixedStream"]


class PrefixedStream(trio.abc.HalfCloseableStream):
    """``stream``, with ``prefix`` returned by the first reads.

    Attributes:
        stream: the underlying stream.
        socket: the underlying stream's socket, if it has one (for peer addresses).
    """

    def __init__(self, stream: trio.abc.HalfCloseableStream, prefix: bytes = b"") -> None:
        self.stream = stream
        self.socket = getattr(stream, "socket", None)
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            await trio.lowlevel.checkpoint()  # before taking: a cancelled read loses nothing
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()
