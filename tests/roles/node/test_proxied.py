"""The node's stream that reads a proxy line before SSH does, over in-memory streams.

The line's checks are :mod:`tests.roles.node.test_proxyline`'s; here: plain SSH
passes untouched, an accepted line is consumed and names the client, a read cut
short by a timer loses nothing, and a refused line is answered with an SSH
DISCONNECT carrying the reason before the connection closes.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioport.errors import DisconnectReason
from trioport.roles.node.proxied import ProxiedStream
from trioport.roles.node.proxyline import ProxyLineRefused
from trioport.sshproto.wire import Reader

LINE = b"TRIOPORT-PROXY v1 203.0.113.9:777 node 1 ok\r\n"


def verify(line: bytes) -> str:
    if line != LINE:
        raise ProxyLineRefused("the proxy line's signature does not verify")
    return "203.0.113.9:777"


def pair() -> tuple[trio.abc.HalfCloseableStream, ProxiedStream, list[tuple[str, str]]]:
    client, server = trio.testing.memory_stream_pair()
    refused: list[tuple[str, str]] = []
    return client, ProxiedStream(server, verify, lambda p, r: refused.append((p, r))), refused


async def read_all(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    got = b""
    while len(got) < size:
        got += await stream.receive_some()
    return got


async def test_plain_ssh_passes_untouched_and_names_no_client() -> None:
    client, server, _ = pair()
    await client.send_all(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert await read_all(server, 21) == b"SSH-2.0-OpenSSH_9.2\r\n"
    assert server.client_addr is None


async def test_an_accepted_line_is_consumed_even_when_a_read_is_cut_short() -> None:
    client, server, _ = pair()
    await client.send_all(LINE[:20])
    with trio.move_on_after(0.05) as scope:  # the SSH driver's timer fires mid-line
        await server.receive_some()
    assert scope.cancelled_caught
    await client.send_all(LINE[20:] + b"SSH-2.0-x\r\n")
    assert await read_all(server, 11) == b"SSH-2.0-x\r\n"
    assert server.client_addr == "203.0.113.9:777"


@pytest.mark.parametrize(
    ("sent", "why"),
    [
        (LINE.replace(b"ok", b"no"), "signature does not verify"),
        (b"TRIOPORT-PROXY " + b"x" * 9000, "longer than 8192 bytes"),
    ],
)
async def test_a_refused_line_gets_a_disconnect_with_the_reason(sent: bytes, why: str) -> None:
    client, server, refused = pair()
    await client.send_all(sent)
    with pytest.raises(trio.BrokenResourceError, match=why):
        await server.receive_some()
    with pytest.raises(trio.BrokenResourceError):  # and stays refused
        await server.receive_some()
    packet = await client.receive_some()
    reader = Reader(packet)
    length = reader.uint32()
    assert len(packet) == 4 + length and length % 8 == 4  # RFC 4253 §6 alignment
    padding = packet[4]
    payload = Reader(packet[5 : 4 + length - padding])
    assert payload.byte() == 1  # SSH_MSG_DISCONNECT
    assert payload.uint32() == DisconnectReason.HOST_NOT_ALLOWED_TO_CONNECT
    assert why in payload.text()
    assert len(refused) == 1 and why in refused[0][1]
