"""Channels are trio HalfCloseableStreams: trio's own conformance checks, over real SSH.

Two trioport connections talk over an in-memory stream pair: this tests our
driver's state machine (windows, EOF, close, cancellation), not a peer.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trioport.errors import AuthenticationFailed, ChannelOpenError
from trioport.ssh import ChannelStream, SSHConnection, SSHHandler, authenticate, open_ssh
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto import events as ev
from trioport.sshproto.keys import PrivateKey

HOST_KEY = PrivateKey.generate("ssh-ed25519")
USER_KEY = PrivateKey.generate("ssh-ed25519")


class Accepting(SSHHandler):
    """Accepts USER_KEY and hands each opened channel to a queue the test reads."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[ChannelStream](100)

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        return request.public_key == USER_KEY.public.blob

    async def channel_open(self, conn: SSHConnection, request: ev.ChannelOpen):
        if request.kind != "session":
            return await super().channel_open(conn, request)

        async def hold(chan: ChannelStream) -> None:
            await self.send.send(chan)
            await trio.sleep_forever()

        return hold


@asynccontextmanager
async def connected_pair(
    window_size: int = 2 * 1024 * 1024, max_packet: int = 32768
) -> AsyncIterator[tuple[SSHConnection, SSHConnection, Accepting]]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    handler = Accepting()
    server_cfg = ConnectionConfig(
        role=Role.SERVER,
        host_keys=[HostKey(HOST_KEY)],
        window_size=window_size,
        max_packet=max_packet,
    )
    client_cfg = ConnectionConfig(role=Role.CLIENT, window_size=window_size, max_packet=max_packet)
    async with (
        open_ssh(server_stream, server_cfg, handler) as server,
        open_ssh(client_stream, client_cfg) as client,
    ):
        await authenticate(client, "alice", signers=[USER_KEY])
        yield client, server, handler


async def channel_pair(client: SSHConnection, handler: Accepting):
    chan = await client.open_session()
    peer = await handler.receive.receive()
    return chan, peer


async def test_check_half_closeable_stream() -> None:
    async with connected_pair() as (client, _server, handler):

        async def maker():
            return await channel_pair(client, handler)

        await trio.testing.check_half_closeable_stream(maker, None)


async def test_backpressure_is_the_window() -> None:
    async with connected_pair(window_size=65536) as (client, _server, handler):
        chan, peer = await channel_pair(client, handler)
        with trio.move_on_after(1) as scope:
            await chan.send_all(b"x" * 200_000)
        assert scope.cancelled_caught  # nobody read: the sender waits for window
        assert client.core_send_window(chan.channel) == 0
        got = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(chan.send_all, b"y" * 10)
            while len(got) < 65536 + 10:
                got += await peer.receive_some()
        assert got.endswith(b"y" * 10)


async def test_a_megabyte_arrives_intact_through_small_windows() -> None:
    data = bytes(range(256)) * 4096
    async with connected_pair(window_size=32768, max_packet=4096) as (client, _server, handler):
        chan, peer = await channel_pair(client, handler)
        got = bytearray()
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                await chan.send_all(data)
                await chan.send_eof()

            nursery.start_soon(send)
            while chunk := await peer.receive_some():
                got += chunk
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


async def test_refused_channel_raises_with_reason() -> None:
    async with connected_pair() as (client, _server, _handler):
        with pytest.raises(ChannelOpenError) as info:
            await client.open_channel("direct-tcpip", host="127.0.0.1", port=1)
        assert info.value.reason == 1  # ADMINISTRATIVELY_PROHIBITED


async def test_wrong_key_fails_authentication() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server_cfg = ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(HOST_KEY)])
    async with (
        open_ssh(server_stream, server_cfg, Accepting()),
        open_ssh(client_stream, ConnectionConfig(role=Role.CLIENT)) as client,
    ):
        with pytest.raises(AuthenticationFailed):
            await authenticate(client, "alice", signers=[PrivateKey.generate("ssh-ed25519")])


async def test_rekey_in_the_middle_of_a_transfer() -> None:
    data = b"z" * 3_000_000
    async with connected_pair() as (client, server, handler):
        chan, peer = await channel_pair(client, handler)
        got = bytearray()
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                await chan.send_all(data[:1_000_000])
                await client.rekey()
                await chan.send_all(data[1_000_000:2_000_000])
                await server.rekey()
                await chan.send_all(data[2_000_000:])
                await chan.send_eof()

            nursery.start_soon(send)
            while chunk := await peer.receive_some():
                got += chunk
        assert got == data
        # A round trip makes sure the client has seen the server's NEWKEYS too.
        await client.global_request(ev.KeepAlive())
        assert client.rekeys == 2 and server.rekeys == 2


async def test_receive_chunks_takes_every_queued_packet_and_reopens_the_window() -> None:
    data = bytes(range(256)) * 2048  # 512 KiB through a 64 KiB window, 4 KiB packets
    async with connected_pair(window_size=65536, max_packet=4096) as (client, _server, handler):
        chan, peer = await channel_pair(client, handler)
        got = bytearray()
        bursts = []
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                await chan.send_all(data)
                await chan.send_eof()

            nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            while chunks := await peer.receive_chunks():
                bursts.append(len(chunks))
                got += b"".join(chunks)
        assert got == data
        assert max(bursts) > 1  # a burst of packets came back in one call
        assert await peer.receive_chunks() == []  # still end of file
