"""A loopback TCP relay that can corrupt one byte on its way through.

Like OpenSSH's regress ``modpipe``: the byte at ``offset`` of one direction's
stream is XORed with ``mask``. Used to prove that every cipher and MAC detects
tampering after the key exchange.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass
class Corruption:
    #: "c2s" (client to server) or "s2c".
    direction: str
    offset: int
    mask: int = 0x01
    done: bool = field(default=False)


async def relay(
    target_port: int,
    corruption: Corruption | None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on a free loopback port and relay them to ``target_port``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def one(client: trio.SocketStream) -> None:
        try:
            server = await trio.open_tcp_stream("127.0.0.1", target_port)
        except OSError:
            await client.aclose()
            return

        async def copy(src: trio.SocketStream, dst: trio.SocketStream, direction: str) -> None:
            seen = 0
            try:
                while data := await src.receive_some(65536):
                    c = corruption
                    if (
                        c
                        and not c.done
                        and c.direction == direction
                        and seen <= c.offset < seen + len(data)
                    ):
                        i = c.offset - seen
                        data = data[:i] + bytes([data[i] ^ c.mask]) + data[i + 1 :]
                        c.done = True
                    seen += len(data)
                    await dst.send_all(data)
                await dst.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

        async with client, server:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(copy, client, server, "c2s")
                nursery.start_soon(copy, server, client, "s2c")

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(one, listeners)
