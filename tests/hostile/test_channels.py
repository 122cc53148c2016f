"""Hostile use of channels by a logged-in client, against a real server.

Data for an unknown or closed channel, data after EOF, data past the window or
larger than the advertised max packet, and a WINDOW_ADJUST that overflows the
32-bit window all end the connection with PROTOCOL_ERROR (OpenSSH channels.c does
the same). A flood of 10,000 CHANNEL_OPENs on one connection is *not* an error:
the server refuses what exceeds its channel limit with RESOURCE_SHORTAGE, keeps
its state bounded, and the connection goes on working.
"""

from __future__ import annotations

import tracemalloc

import pytest
import trio

from trioport.errors import ChannelOpenFailureReason, DisconnectReason
from trioport.sshproto import ConnectionConfig, Role
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m

from .conftest import TIMEOUT
from .peer import HostilePeer
from .test_limits import _exited

PROTOCOL_ERROR = DisconnectReason.PROTOCOL_ERROR
#: The server's defaults (ConnectionConfig): 2 MiB window, 128 KiB max packet, 100 channels.
WINDOW = 2 * 1024 * 1024
MAX_PACKET = 128 * 1024
MAX_CHANNELS = 100


async def _logged_in(bed, keys, **kwargs) -> HostilePeer:
    peer = await bed.peer(**kwargs)
    await peer.goto("connected", keys.mallory)
    return peer


async def _expect_protocol_error(bed, peer: HostilePeer, words: str, *, sessions: int = 1) -> None:
    disconnect = await peer.expect_disconnect()
    assert disconnect.code == PROTOCOL_ERROR
    assert words in disconnect.description
    (server_side,) = bed.handler.connections["mallory"]
    assert server_side.closed
    bed.nothing_ran(logged_in=True, sessions=sessions)
    await bed.witness_works()


@pytest.mark.parametrize(
    "payload",
    [
        bytes(m.ChannelData(4242, b"x")),
        bytes(m.ChannelExtendedData(4242, 1, b"x")),
        bytes(m.ChannelEof(4242)),
        bytes(m.ChannelClose(4242)),
        bytes(m.ChannelRequest(4242, "exec", True, b"\x00\x00\x00\x04true")),
        bytes(m.ChannelWindowAdjust(4242, 1)),
        bytes(m.ChannelSuccess(4242)),
    ],
    ids=["DATA", "EXTENDED_DATA", "EOF", "CLOSE", "REQUEST", "WINDOW_ADJUST", "SUCCESS"],
)
async def test_message_for_unknown_channel(hostile_server, keys, payload: bytes) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        await peer.inject(payload)
        await _expect_protocol_error(bed, peer, "unknown channel 4242", sessions=0)


async def test_data_for_a_closed_channel(hostile_server, keys) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        cid = await peer.open_session()
        remote = peer.remote_channel(cid)
        await peer.send_event(ev.ChannelClose(channel=cid))
        await peer.wait_for(lambda e: e == ev.ChannelClose(channel=cid))
        # Closed both ways: the server has forgotten the number.
        await peer.inject(bytes(m.ChannelData(remote, b"after close")))
        await _expect_protocol_error(bed, peer, f"data for unknown channel {remote}")


@pytest.mark.parametrize(
    ("first", "words"),
    [("close", "in state close_received"), ("eof", "data on channel 0 in state eof_received")],
)
async def test_data_right_after_our_close_or_eof(hostile_server, keys, first, words) -> None:
    # The data follows our CLOSE (or EOF) in the same write, before any answer.
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        cid = await peer.open_session()
        remote = peer.remote_channel(cid)
        assert remote == 0
        peer.conn.send(
            ev.ChannelClose(channel=cid) if first == "close" else ev.ChannelEOF(channel=cid)
        )
        await peer.inject(bytes(m.ChannelData(remote, b"too late")))
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == PROTOCOL_ERROR
        # After CLOSE the server may already have answered it and forgotten the id.
        assert words in disconnect.description or (
            first == "close" and "data for unknown channel 0" in disconnect.description
        )
        bed.nothing_ran(logged_in=True, sessions=1)
        await bed.witness_works()


async def test_data_past_the_window(hostile_server, keys) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        cid = await peer.open_session()
        remote = peer.remote_channel(cid)
        # Nobody reads the channel on the server (no command runs), so its window
        # stays at what it advertised: exactly WINDOW bytes are fine, one more is not.
        chunk = bytes(m.ChannelData(remote, bytes(MAX_PACKET)))
        await peer.inject(*[chunk] * (WINDOW // MAX_PACKET))
        await peer.inject(bytes(m.ChannelData(remote, b"!")))
        await _expect_protocol_error(bed, peer, "peer ignored channel window")


async def test_data_larger_than_max_packet(hostile_server, keys) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        cid = await peer.open_session()
        remote = peer.remote_channel(cid)
        await peer.inject(bytes(m.ChannelData(remote, bytes(MAX_PACKET + 1))))
        await _expect_protocol_error(bed, peer, "more than the max packet we advertised")


@pytest.mark.parametrize("amount", [2**32 - 1, 2**32 - WINDOW])
async def test_window_adjust_overflow(hostile_server, keys, amount: int) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        cid = await peer.open_session()
        # The server may send us WINDOW bytes (what our core advertised); adding
        # ``amount`` goes past 2**32 - 1 (RFC 4254 §5.2).
        await peer.inject(bytes(m.ChannelWindowAdjust(peer.remote_channel(cid), amount)))
        await _expect_protocol_error(bed, peer, "channel window adjusted beyond 2**32 - 1")


async def test_window_adjust_up_to_the_limit_is_fine(hostile_server, keys) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        cid = await peer.open_session()
        remote = peer.remote_channel(cid)
        await peer.inject(bytes(m.ChannelWindowAdjust(remote, 2**32 - 1 - WINDOW)))
        # Still alive: the channel runs a command.
        assert await peer.exec(b"echo ok", cid) == b"ok\n"
        await bed.witness_works()


async def test_ten_thousand_channel_opens(hostile_server, keys) -> None:
    flood = 10_000
    with trio.fail_after(TIMEOUT * 2):
        bed = await hostile_server()
        config = ConnectionConfig(role=Role.CLIENT, max_channels=flood + 10)
        peer = await _logged_in(bed, keys, config=config)
        (server_side,) = bed.handler.connections["mallory"]
        ids = []
        for _ in range(flood):
            cid = peer.conn.new_channel_id()
            peer.conn.send(ev.ChannelOpen(channel=cid, kind="session"))
            ids.append(cid)
        data = peer.discard()

        def answered() -> int:
            return len(peer.seen(ev.ChannelOpenConfirmation)) + len(
                peer.seen(ev.ChannelOpenFailure)
            )

        tracemalloc.start()
        try:
            async with trio.open_nursery() as nursery:
                # Write and read at once: neither side may wait for the other's buffer.
                nursery.start_soon(peer.send_raw, data)
                await peer.until(lambda: answered() == flood)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        confirmed = peer.seen(ev.ChannelOpenConfirmation)
        refused = peer.seen(ev.ChannelOpenFailure)
        assert len(confirmed) == MAX_CHANNELS
        assert len(refused) == flood - MAX_CHANNELS
        assert {(e.reason, e.description) for e in refused} == {
            (ChannelOpenFailureReason.RESOURCE_SHORTAGE, "too many channels")
        }
        # The handler was asked only for what the server kept; the server's channel
        # table (a private of the core, read here on purpose) stays at the limit.
        assert bed.handler.opens_by("mallory") == ["session"] * MAX_CHANNELS
        assert len(server_side._core._channels._channels) == MAX_CHANNELS
        # Python allocations of the whole process (server, and the peer with its
        # 10,000 channel records and 600 kB of packets) while the flood went through;
        # about 3 MiB when this was written. A leak per refusal would show here.
        assert peak < 16 * 1024 * 1024, peak
        assert not server_side.closed and not peer.eof

        # The connection still works: close one, open one more, run a command on it.
        first = confirmed[0].channel
        await peer.send_event(ev.ChannelClose(channel=first))
        await peer.wait_for(lambda e: e == ev.ChannelClose(channel=first))
        assert await peer.exec(b"echo still here") == b"still here\n"
        await bed.witness_works()


@pytest.mark.parametrize(
    ("sequence", "words"),
    [
        (["EOF", "EOF"], "eof on channel 0 in state eof_received"),
        (["EOF", "EXTENDED_DATA"], "data on channel 0 in state eof_received"),
        (["CLOSE", "CLOSE"], "channel 0"),
        (["CLOSE", "REQUEST"], "channel 0"),
        (["CLOSE", "EOF"], "channel 0"),
        (["SUCCESS"], "reply on channel 0 to no request"),
    ],
    ids=["eof-eof", "eof-extended-data", "close-close", "close-request", "close-eof", "reply"],
)
async def test_channel_messages_out_of_order(hostile_server, keys, sequence, words) -> None:
    # asyncssh's channel checklist: two EOFs, two CLOSEs, data or a request after
    # EOF or CLOSE, a reply nobody asked for.
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        cid = await peer.open_session()
        remote = peer.remote_channel(cid)
        assert remote == 0
        messages = {
            "EOF": m.ChannelEof(remote),
            "CLOSE": m.ChannelClose(remote),
            "EXTENDED_DATA": m.ChannelExtendedData(remote, 1, b"x"),
            "REQUEST": m.ChannelRequest(remote, "shell", True),
            "SUCCESS": m.ChannelSuccess(remote),
        }
        await peer.inject(*(bytes(messages[name]) for name in sequence))
        # After a CLOSE the server may already have answered it and forgotten the
        # number; then the second message names an unknown channel. Both are errors.
        await _expect_protocol_error(bed, peer, words)


async def test_channel_open_with_max_packet_zero_is_refused(hostile_server, keys) -> None:
    # Never run a command on such a channel here: on a server with the bug that
    # freezes this very process. Refusing the open (OPEN_FAILURE, or ending the
    # connection with PROTOCOL_ERROR) is what keeps the server safe.
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        _, answer = await peer.open_session_as(window=WINDOW, max_packet=0)
        if isinstance(answer, ev.Disconnect):
            assert answer.code == PROTOCOL_ERROR
        else:
            assert isinstance(answer, ev.ChannelOpenFailure), answer
        assert bed.handler.opens_by("mallory") == []
        await bed.witness_works()


async def test_channel_open_with_max_packet_one_works(hostile_server, keys) -> None:
    # The smallest legal max_packet: output arrives one byte per packet.
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        cid, answer = await peer.open_session_as(window=WINDOW, max_packet=1)
        assert answer == ev.ChannelOpenConfirmation(channel=cid)
        assert await peer.exec(b"echo hello", cid) == b"hello\n"
        sizes = {len(e.data) for e in peer.seen(ev.ChannelData) if e.channel == cid}
        assert sizes == {1}
        await bed.witness_works()


async def test_stalled_rekey_does_not_buffer_without_bound(hostile_server, keys) -> None:
    output = 32 * 1024 * 1024
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        (server_side,) = bed.handler.connections["mallory"]
        # The largest window the protocol allows: the window is no limit at all.
        cid, answer = await peer.open_session_as(window=2**32 - 1, max_packet=MAX_PACKET)
        assert answer == ev.ChannelOpenConfirmation(channel=cid)
        command = f"echo $$ >&2; sleep 0.5; exec head -c {output} /dev/zero".encode()
        await peer.send_event(
            ev.ChannelRequest(channel=cid, request=ev.Exec(command=command), want_reply=False)
        )
        first = await peer.wait_for(lambda e: isinstance(e, ev.ChannelData) and e.stream == 1)
        pid = int(first.data)  # type: ignore[attr-defined]
        # Start a re-exchange and never finish it: our ECDH_INIT is withheld.
        peer.drop.add(m.MsgId.KEX_ECDH_INIT)
        peer.conn.rekey()
        await peer.flush()
        try:
            async with trio.open_nursery() as nursery:

                async def read_everything() -> None:
                    while not peer.eof:
                        await peer.step()

                nursery.start_soon(read_everything)
                # Give the command time to write it all, if the server lets it.
                with trio.move_on_after(2):
                    await _exited(pid)
                # What the server holds for us, waiting for the exchange to end
                # (the transport's private queue, read here on purpose).
                held = sum(len(p) for p in server_side._core._transport._held)
                nursery.cancel_scope.cancel()
        finally:
            await peer.aclose()
        # OpenSSH stops reading channels while it re-keys; anything near the
        # command's whole output means there is no limit.
        assert held < 8 * 1024 * 1024, held
        await bed.witness_works()


async def test_env_requests_are_capped(hostile_server, keys) -> None:
    requests = 300
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await _logged_in(bed, keys)
        cid = await peer.open_session()
        start = len(peer.events)

        def replies() -> list[ev.Event]:
            return [e for e in peer.events[start:] if isinstance(e, ev.ChannelRequestReply)]

        # In batches the server's request queue (64) takes whole: only the env
        # rule itself may refuse.
        for batch in range(0, requests, 30):
            end = min(batch + 30, requests)
            for i in range(batch, end):
                peer.conn.send(
                    ev.ChannelRequest(
                        channel=cid,
                        request=ev.Env(name=f"LC_HOSTILE_{i}", value="x"),
                        want_reply=True,
                    )
                )
            await peer.flush()
            await peer.until(lambda end=end: len(replies()) == end)
        accepted = sum(1 for e in replies() if e.ok)  # type: ignore[attr-defined]
        out = await peer.exec(b"env | grep -c '^LC_HOSTILE_'", cid)
        assert int(out) == accepted
        assert accepted <= 129, accepted  # OpenSSH: num_env > 128 is refused
        await bed.witness_works()
