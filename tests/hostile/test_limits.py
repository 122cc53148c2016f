"""The driver's limits against real connections: login grace, unauthenticated
connections (global and per source), and keepalives.

Short real time is used here (a 1 s grace, a 0.2 s keepalive); no test asserts an
upper bound on time, only what happened and why.
"""

from __future__ import annotations

import os

import pytest
import trio

from trioport.errors import DisconnectReason
from trioport.ssh.server import ServerLimits
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m

from .conftest import TIMEOUT
from .peer import HostilePeer

GRACE = 1.0


@pytest.mark.parametrize("position", ["silent", "before-kexinit", "kex", "service", "userauth"])
async def test_login_grace(hostile_server, position: str) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server(limits=ServerLimits(login_grace=GRACE))
        peer = await bed.peer()
        started = trio.current_time()
        if position != "silent":
            await peer.goto(position)
        else:
            peer.discard()  # not even a version line
        disconnect = await peer.expect_disconnect()
        assert trio.current_time() - started >= GRACE
        assert disconnect.code == DisconnectReason.BY_APPLICATION
        assert disconnect.description == "login grace time exceeded"
        bed.nothing_ran()
        # The witness logged in long ago; its own connection is not subject to it.
        await bed.witness_works()


async def _chatty_clients(
    bed, clients: int, batch: int, pause: float
) -> list[ev.Disconnect | None]:
    """``clients`` connections that reach user auth, then send ``batch`` IGNOREs every
    ``pause`` seconds until the server ends them; what each one was told."""
    told: list[ev.Disconnect | None] = []

    async def chatter() -> None:
        peer = await bed.peer()
        await peer.goto("userauth")
        ignores = [bytes(m.Ignore(b"still typing"))] * batch
        async with trio.open_nursery() as nursery:

            async def talk() -> None:
                while True:
                    try:
                        await peer.inject(*ignores)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    await trio.sleep(pause)

            nursery.start_soon(talk)
            await peer.until(lambda: peer.eof)
            nursery.cancel_scope.cancel()
        found = peer.seen(ev.Disconnect)
        told.append(found[0] if found else None)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(chatter)
    return told


async def test_login_grace_expires_while_clients_are_busy(hostile_server) -> None:
    # regreSSHion (CVE-2024-6387) was a race between the grace timer and work in
    # progress. Here the timer is a cancel scope: twenty clients keep talking
    # (IGNOREs after the key exchange) while their grace runs out; every one is
    # closed, whatever it is told says why, and the server goes on serving.
    clients = 20
    limits = ServerLimits(login_grace=GRACE, max_unauthenticated_per_source=clients)
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server(limits=limits)
        told = await _chatty_clients(bed, clients, batch=1, pause=0.05)
        assert len(told) == clients
        for disconnect in filter(None, told):
            assert disconnect.code == DisconnectReason.BY_APPLICATION
            assert disconnect.description == "login grace time exceeded"
        bed.nothing_ran()
        await bed.witness_works()


async def test_every_busy_client_is_told_why(hostile_server) -> None:
    # The same race made sharp: 24 clients keep the server reading all the time.
    # Each must still receive its DISCONNECT, not just a closed socket.
    clients = 24
    limits = ServerLimits(login_grace=GRACE, max_unauthenticated_per_source=clients)
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server(limits=limits)
        told = await _chatty_clients(bed, clients, batch=20, pause=0.002)
        reasons = [(d.code, d.description) if d else None for d in told]
        assert reasons == [(DisconnectReason.BY_APPLICATION, "login grace time exceeded")] * clients
        await bed.witness_works()


async def _admitted(peer: HostilePeer) -> None:
    """The server took this connection on: the key exchange completes."""
    await peer.handshake()


async def test_unauthenticated_per_source(hostile_server, keys) -> None:
    limits = ServerLimits(max_unauthenticated=100, max_unauthenticated_per_source=2)
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server(limits=limits)
        first, second = await bed.peer(), await bed.peer()
        await _admitted(first)
        await _admitted(second)
        # A third from the same address is refused at once, before any key exchange.
        extra = await bed.peer()
        await extra.flush()
        disconnect = await extra.expect_disconnect()
        assert disconnect.code == DisconnectReason.TOO_MANY_CONNECTIONS
        assert disconnect.description == "too many unauthenticated connections from your address"
        assert not extra.seen_kex()
        # Another source is not affected.
        elsewhere = await bed.peer(local_address="127.0.0.2")
        await elsewhere.authenticate("mallory", keys.mallory)
        # The two held connections proceed; logging in frees their places.
        await first.authenticate("mallory", keys.mallory)
        await second.authenticate("mallory", keys.mallory)
        again = await bed.peer()
        await again.authenticate("mallory", keys.mallory)
        assert await again.exec(b"echo in") == b"in\n"
        assert bed.handler.logins.count("mallory") == 4
        await bed.witness_works()


async def test_unauthenticated_global(hostile_server, keys) -> None:
    limits = ServerLimits(max_unauthenticated=2, max_unauthenticated_per_source=10)
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server(limits=limits)
        first = await bed.peer(local_address="127.0.0.1")
        second = await bed.peer(local_address="127.0.0.2")
        await _admitted(first)
        await _admitted(second)
        extra = await bed.peer(local_address="127.0.0.3")
        await extra.flush()
        disconnect = await extra.expect_disconnect()
        assert disconnect.code == DisconnectReason.TOO_MANY_CONNECTIONS
        assert disconnect.description == "too many unauthenticated connections"
        assert not extra.seen_kex()
        # One logs in: its place goes to the next comer.
        await first.authenticate("mallory", keys.mallory)
        later = await bed.peer(local_address="127.0.0.3")
        await later.authenticate("mallory", keys.mallory)
        await second.authenticate("mallory", keys.mallory)
        assert bed.handler.logins.count("mallory") == 3
        await bed.witness_works()


async def test_refused_and_dropped_connections_free_their_places(hostile_server, keys) -> None:
    # Connections that end before login (refused, or closed by the client) must not
    # hold their place: otherwise a few rude clients lock everyone out.
    limits = ServerLimits(max_unauthenticated=2, max_unauthenticated_per_source=2)
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server(limits=limits)
        for _ in range(3):
            held = [await bed.peer(), await bed.peer()]
            for peer in held:
                await _admitted(peer)
            extra = await bed.peer()
            await extra.flush()
            assert (await extra.expect_disconnect()).code == DisconnectReason.TOO_MANY_CONNECTIONS
            for peer in held:
                # A protocol error ends each; the server must release both places.
                await peer.inject(bytes(m.UserauthSuccess()))
                assert (await peer.expect_disconnect()).code == DisconnectReason.PROTOCOL_ERROR
        last = await bed.peer()
        await last.authenticate("mallory", keys.mallory)
        await bed.witness_works()


KEEPALIVE = ServerLimits(keepalive_interval=0.2, keepalive_count=2)


async def test_keepalive_drops_a_client_that_stopped_reading(hostile_server, keys) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server(limits=KEEPALIVE)
        peer = await bed.peer()
        await peer.authenticate("mallory", keys.mallory)
        # Mallory reads nothing from now on; the server notices by itself.
        (server_side,) = bed.handler.connections["mallory"]
        await server_side.wait_closed()
        # Her core would answer each keepalive@openssh.com; none of that is sent.
        peer.drop.add(m.MsgId.REQUEST_FAILURE)
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == DisconnectReason.CONNECTION_LOST
        assert disconnect.description == "keepalive timeout"
        unanswered = [p for p in peer.dropped if p[0] == m.MsgId.REQUEST_FAILURE]
        assert len(unanswered) == KEEPALIVE.keepalive_count
        await bed.witness_works()


async def test_keepalive_keeps_clients_that_answer(hostile_server, keys) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server(limits=KEEPALIVE)
        peer = await bed.peer()
        await peer.authenticate("mallory", keys.mallory)

        def answered() -> int:
            return sum(1 for p in peer.written if p[0] == m.MsgId.REQUEST_FAILURE)

        # Several rounds, each answered (OpenSSH answers keepalives with failure).
        await peer.until(lambda: answered() >= 3 * KEEPALIVE.keepalive_count, answer=True)
        assert await peer.exec(b"echo awake") == b"awake\n"
        (server_side,) = bed.handler.connections["mallory"]
        assert not server_side.closed
        # The trioport witness answered the same keepalives all along.
        (witness_side,) = bed.handler.connections["witness"]
        assert not witness_side.closed
        await bed.witness_works()


async def test_keepalive_drops_a_client_drowning_in_output(hostile_server, keys) -> None:
    # A client that asks for much output and never reads wedges its own connection:
    # the server's writes block, so its keepalives cannot even be sent. It must
    # still drop the connection (no DISCONNECT can reach a peer that does not read)
    # and end the commands it ran for it.
    sessions = 16  # 16 x 2 MiB of window: more than both socket buffers hold
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server(limits=KEEPALIVE)
        peer = await bed.peer()
        await peer.authenticate("mallory", keys.mallory)
        (server_side,) = bed.handler.connections["mallory"]
        channels = [await peer.open_session() for _ in range(sessions)]
        command = b"echo $$; exec head -c 100000000 /dev/zero"
        for cid in channels:
            peer.conn.send(
                ev.ChannelRequest(channel=cid, request=ev.Exec(command=command), want_reply=False)
            )
        await peer.flush()
        # Read only until every command said its pid (our windows never reopen).
        first_data: dict[int, bytes] = {}

        def all_started() -> bool:
            for e in peer.seen(ev.ChannelData):
                first_data.setdefault(e.channel, e.data)
            return len(first_data) == sessions

        await peer.until(all_started)
        pids = [int(first_data[cid].split(b"\n")[0]) for cid in channels]
        # From here on mallory reads nothing.
        await server_side.wait_closed()
        for pid in pids:
            await _exited(pid)
        # What the kernel had buffered still arrives, then the end of the stream.
        await peer.until(lambda: peer.eof)
        assert len(b"".join(e.data for e in peer.seen(ev.ChannelData))) < sessions * 2**21
        await bed.witness_works()


async def _exited(pid: int) -> None:
    """Wait until process ``pid`` has terminated (a pidfd turns readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone and reaped
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def test_a_client_that_never_reads_its_replies_cannot_grow_the_server_queue(
    hostile_server, keys
) -> None:
    # Every global request with want_reply gets an answer. A client that keeps asking
    # and never reads the answers must make the server stop reading (its replies back
    # up), not buffer replies without bound; other clients are served meanwhile.
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.authenticate("mallory", keys.mallory)
        (server_side,) = bed.handler.connections["mallory"]
        ask = bytes(m.GlobalRequest("nonsense@example.com", True))
        sent = 0
        while True:
            # A batch that cannot be written within seconds: the server stopped reading.
            with trio.move_on_after(3) as stuck:
                await peer.send_message(*[ask] * 2000)
                sent += 2000
            if stuck.cancelled_caught or sent >= 2_000_000:
                break
        assert stuck.cancelled_caught, "the server read two million requests unanswered"
        # Its own queue of replies stays within the reader's bound and one read's worth.
        assert server_side._core.bytes_to_send <= 1 << 20
        await bed.witness_works()
