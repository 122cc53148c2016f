"""The connection protocol (RFC 4254): channels, windows, requests, global requests."""

from __future__ import annotations

import pytest

from trioport.errors import ChannelOpenFailureReason, LocalProtocolError, RemoteProtocolError
from trioport.sshproto import OurChannelState, TheirChannelState
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m

from .helpers import ConnectionPair, authenticated_pair, inject


def _pair(**kwargs: object) -> ConnectionPair:
    return authenticated_pair(seed="channels", **kwargs)


def _violation(
    pair: ConnectionPair, victim_peer_payload: bytes, *, attacker: str = "client"
) -> str:
    """Inject a payload from ``attacker``; the victim must disconnect. Returns the reason."""
    src = pair.client if attacker == "client" else pair.server
    inject(src, victim_peer_payload)
    with pytest.raises(RemoteProtocolError) as info:
        pair.transfer(src)
    victim = pair.other(src)
    assert victim.closed
    pair.transfer(victim)
    assert pair.take(src)[-1] == ev.Disconnect(code=2, description=info.value.description)
    return info.value.description


def test_open_data_eof_close_and_the_id_is_freed() -> None:
    pair = _pair()
    cid, sid = pair.open_session()
    assert (cid, sid) == (0, 0)
    pair.client.send(ev.ChannelData(channel=cid, data=b"hello"))
    pair.client.send(ev.ChannelData(channel=cid, data=b"oops", stream=1))
    pair.client.send(ev.ChannelEOF(channel=cid))
    pair.pump()
    assert pair.take(pair.server) == [
        ev.ChannelData(channel=sid, data=b"hello"),
        ev.ChannelData(channel=sid, data=b"oops", stream=1),
        ev.ChannelEOF(channel=sid),
    ]
    pair.server.send(ev.ChannelData(channel=sid, data=b"bye"))
    pair.server.send(ev.ChannelRequest(channel=sid, request=ev.ExitStatus(status=0)))
    pair.server.send(ev.ChannelEOF(channel=sid))
    pair.server.send(ev.ChannelClose(channel=sid))
    pair.pump()
    assert pair.take(pair.client) == [
        ev.ChannelData(channel=cid, data=b"bye"),
        ev.ChannelRequest(channel=cid, request=ev.ExitStatus(status=0)),
        ev.ChannelEOF(channel=cid),
        ev.ChannelClose(channel=cid),
    ]
    chan = pair.client._channels._channels[cid]
    assert chan.theirs is TheirChannelState.CLOSE_RECEIVED
    assert chan.ours is OurChannelState.EOF_SENT
    pair.client.send(ev.ChannelClose(channel=cid))
    pair.pump()
    assert pair.take(pair.server) == [ev.ChannelClose(channel=sid)]
    with pytest.raises(LocalProtocolError):
        pair.client.send_window(cid)  # gone on both sides
    assert pair.open_session() == (0, 0)


def test_ids_are_reused_only_after_both_closes() -> None:
    pair = _pair()
    first, _ = pair.open_session()
    second, _ = pair.open_session()
    assert (first, second) == (0, 1)
    pair.client.send(ev.ChannelClose(channel=first))
    pair.pump()
    assert pair.client.new_channel_id() == 2  # 0 is half closed, 1 open
    pair.server.send(ev.ChannelClose(channel=0))
    pair.pump()
    assert pair.client.new_channel_id() == 0


def test_new_channel_id_reserves_the_id() -> None:
    pair = _pair()
    assert pair.client.new_channel_id() == 0
    assert pair.client.new_channel_id() == 1
    # An open from the peer skips reserved ids.
    _, cid = pair.open_session(opener=pair.server)
    assert cid == 2


def test_window_exhaustion_and_reopening() -> None:
    pair = _pair(server={"window_size": 1000})
    cid, sid = pair.open_session()
    assert pair.client.send_window(cid) == 1000
    pair.client.send(ev.ChannelData(channel=cid, data=b"a" * 1000))  # exactly the window
    assert pair.client.send_window(cid) == 0
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.ChannelData(channel=cid, data=b"b"))
    pair.pump()
    pair.take(pair.server)
    pair.server.acknowledge_received_data(sid, 499)
    pair.pump()
    assert pair.take(pair.client) == []  # batched: less than half the window
    pair.server.acknowledge_received_data(sid, 1)
    pair.pump()
    assert pair.take(pair.client) == [ev.ChannelWindowAdjusted(channel=cid)]
    assert pair.client.send_window(cid) == 500
    with pytest.raises(LocalProtocolError):
        pair.server.acknowledge_received_data(sid, 501)  # only 500 unacknowledged


def test_data_larger_than_max_packet_is_refused_locally() -> None:
    pair = _pair(server={"max_packet": 4096})
    cid, _ = pair.open_session()
    assert pair.client.max_packet(cid) == 4096
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.ChannelData(channel=cid, data=b"x" * 4097))
    pair.client.send(ev.ChannelData(channel=cid, data=b"x" * 4096))


def test_max_packet_is_capped_at_128_kib() -> None:
    pair = _pair(server={"max_packet": 200_000})
    cid, _ = pair.open_session()
    assert pair.client.max_packet(cid) == 128 * 1024


def test_a_peer_advertising_openssh_s_32_kib_gets_32_kib_packets() -> None:
    pair = _pair(server={"max_packet": 32768})
    cid, _ = pair.open_session()
    assert pair.client.max_packet(cid) == 32768


def test_data_past_the_window_disconnects() -> None:
    pair = _pair(server={"window_size": 100})
    _, sid = pair.open_session()
    reason = _violation(pair, bytes(m.ChannelData(sid, b"x" * 101)))
    assert reason == "peer ignored channel window"


def test_data_larger_than_our_max_packet_disconnects() -> None:
    pair = _pair(server={"max_packet": 1024})
    _, sid = pair.open_session()
    assert "max packet" in _violation(pair, bytes(m.ChannelData(sid, b"x" * 1025)))


def test_data_after_eof_disconnects() -> None:
    pair = _pair()
    cid, sid = pair.open_session()
    pair.client.send(ev.ChannelEOF(channel=cid))
    pair.pump()
    _violation(pair, bytes(m.ChannelData(sid, b"late")))


@pytest.mark.parametrize(
    "payload",
    [
        bytes(m.ChannelEof(0)),
        bytes(m.ChannelClose(0)),
        bytes(m.ChannelRequest(0, "shell", True)),
        bytes(m.ChannelData(0, b"x")),
        bytes(m.ChannelWindowAdjust(0, 1)),
    ],
)
def test_anything_after_close_disconnects(payload: bytes) -> None:
    pair = _pair()
    cid, _ = pair.open_session()
    pair.client.send(ev.ChannelClose(channel=cid))  # the server still holds channel 0
    pair.pump()
    _violation(pair, payload)


def test_second_eof_disconnects() -> None:
    pair = _pair()
    cid, sid = pair.open_session()
    pair.client.send(ev.ChannelEOF(channel=cid))
    pair.pump()
    _violation(pair, bytes(m.ChannelEof(sid)))


def test_data_for_an_unknown_channel_disconnects() -> None:
    pair = _pair()
    assert "unknown channel 7" in _violation(pair, bytes(m.ChannelData(7, b"x")))


def test_data_for_an_unconfirmed_channel_disconnects() -> None:
    pair = _pair()
    pair.client.send(ev.ChannelOpen(channel=pair.client.new_channel_id(), kind="session"))
    pair.pump()  # the server has not confirmed: the client cannot know its id
    _violation(pair, bytes(m.ChannelData(0, b"x")))


def test_window_adjust_overflow_disconnects() -> None:
    pair = _pair()
    _, sid = pair.open_session()
    # The server's send window is the client's 2 MiB; push it past 2**32 - 1.
    reason = _violation(pair, bytes(m.ChannelWindowAdjust(sid, 2**32 - 2 * 1024 * 1024)))
    assert "2**32" in reason


def test_ten_thousand_opens_get_refusals_not_a_crash() -> None:
    pair = _pair(client={"max_channels": 20_000})
    for _ in range(10_000):
        pair.client.send(ev.ChannelOpen(channel=pair.client.new_channel_id(), kind="session"))
    pair.pump()
    opened = [e for e in pair.take(pair.server) if isinstance(e, ev.ChannelOpen)]
    assert len(opened) == 100  # max_channels
    refusals = [e for e in pair.take(pair.client) if isinstance(e, ev.ChannelOpenFailure)]
    assert len(refusals) == 9_900
    assert {e.reason for e in refusals} == {ChannelOpenFailureReason.RESOURCE_SHORTAGE}
    # The refused ids are free again on the client.
    assert pair.client.new_channel_id() == 100


def test_open_failure_frees_the_id() -> None:
    pair = _pair()
    cid = pair.client.new_channel_id()
    pair.client.send(ev.ChannelOpen(channel=cid, kind="direct-tcpip", host="db", port=5432))
    pair.pump()
    (opened,) = pair.take(pair.server)
    assert opened == ev.ChannelOpen(channel=0, kind="direct-tcpip", host="db", port=5432)
    pair.server.send(ev.ChannelOpenFailure(channel=opened.channel, reason=2, description="refused"))
    pair.pump()
    assert pair.take(pair.client) == [
        ev.ChannelOpenFailure(channel=cid, reason=2, description="refused")
    ]
    assert pair.client.new_channel_id() == cid


@pytest.mark.parametrize(
    "open_event",
    [
        ev.ChannelOpen(channel=0, kind="session"),
        ev.ChannelOpen(
            channel=0,
            kind="direct-tcpip",
            host="example.com",
            port=443,
            originator_address="10.0.0.1",
            originator_port=55555,
        ),
        ev.ChannelOpen(
            channel=0,
            kind="forwarded-tcpip",
            host="0.0.0.0",
            port=8080,
            originator_address="192.0.2.7",
            originator_port=1234,
        ),
        ev.ChannelOpen(channel=0, kind="auth-agent@openssh.com"),
        ev.ChannelOpen(channel=0, kind="x11", originator_address="127.0.0.1", originator_port=6010),
        ev.ChannelOpen(
            channel=0, kind="tun@openssh.com", extra=b"\x00\x00\x00\x01\x7f\xff\xff\xff"
        ),
    ],
)
def test_every_channel_open_type_round_trips(open_event: ev.ChannelOpen) -> None:
    pair = _pair()
    assert pair.client.new_channel_id() == open_event.channel
    pair.client.send(open_event)
    pair.pump()
    assert pair.take(pair.server) == [open_event]


REQUESTS = [
    ev.PtyRequest(
        term="xterm-256color",
        width_chars=80,
        height_rows=24,
        width_pixels=640,
        height_pixels=480,
        modes={1: 3, 53: 1, 128: 38400, 129: 38400},
    ),
    ev.Shell(),
    ev.Exec(command=b"ls -la /\xff"),
    ev.Subsystem(name="sftp"),
    ev.WindowChange(width_chars=120, height_rows=40),
    ev.Env(name="LANG", value="C.UTF-8"),
    ev.Signal(name="INT"),
    ev.ExitStatus(status=255),
    ev.ExitSignal(name="KILL", core_dumped=True, message="killed"),
    ev.Eow(),
    ev.AgentForwarding(),
    ev.UnknownRequest(name="x11-req", data=b"\x00\x00\x00\x00"),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_every_channel_request_round_trips(request_: ev.ChannelRequestType) -> None:
    pair = _pair()
    cid, sid = pair.open_session()
    pair.client.send(ev.ChannelRequest(channel=cid, request=request_, want_reply=True))
    pair.pump()
    assert pair.take(pair.server) == [
        ev.ChannelRequest(channel=sid, request=request_, want_reply=True)
    ]


def test_requests_are_answered_in_order() -> None:
    pair = _pair()
    cid, sid = pair.open_session()
    pair.client.send(
        ev.ChannelRequest(channel=cid, request=ev.Env(name="A", value="1"), want_reply=True)
    )
    pair.client.send(ev.ChannelRequest(channel=cid, request=ev.Shell(), want_reply=True))
    pair.pump()
    pair.server.send(ev.ChannelRequestReply(channel=sid, ok=False))
    pair.server.send(ev.ChannelRequestReply(channel=sid, ok=True))
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.ChannelRequestReply(channel=sid, ok=True))  # nothing asked
    pair.pump()
    assert pair.take(pair.client) == [
        ev.ChannelRequestReply(channel=cid, ok=False),
        ev.ChannelRequestReply(channel=cid, ok=True),
    ]


def test_unsolicited_channel_reply_disconnects() -> None:
    pair = _pair()
    _, sid = pair.open_session()
    _violation(pair, bytes(m.ChannelSuccess(sid)))


def test_pty_modes_parsing_stops_at_undefined_opcodes() -> None:
    modes = m.encode_pty_modes({1: 3})[:-1] + b"\xa0junk"
    assert m.decode_pty_modes(modes) == {1: 3}
    assert m.decode_pty_modes(b"") == {}


# --- global requests -------------------------------------------------------------------


def test_tcpip_forward_to_port_zero_reports_the_port() -> None:
    pair = _pair()
    pair.client.send(
        ev.GlobalRequest(request=ev.TcpipForward(address="localhost", port=0), want_reply=True)
    )
    pair.pump()
    assert pair.take(pair.server) == [
        ev.GlobalRequest(request=ev.TcpipForward(address="localhost", port=0), want_reply=True)
    ]
    pair.server.send(ev.GlobalRequestReply(ok=True, port=40123))
    pair.pump()
    (reply,) = pair.take(pair.client)
    assert reply.ok and reply.port == 40123


def test_keepalive_is_answered_by_the_core_in_order() -> None:
    pair = _pair()
    forward = ev.GlobalRequest(request=ev.CancelTcpipForward(address="", port=80), want_reply=True)
    pair.client.send(forward)
    pair.client.send(ev.GlobalRequest(request=ev.KeepAlive(), want_reply=True))
    pair.pump()
    assert pair.take(pair.server) == [forward]  # the keepalive never reaches the driver
    assert pair.take(pair.client) == []  # its answer waits behind the owed one
    pair.server.send(ev.GlobalRequestReply(ok=True))
    pair.pump()
    assert pair.take(pair.client) == [
        ev.GlobalRequestReply(ok=True),
        ev.GlobalRequestReply(ok=False),  # OpenSSH answers keepalives with failure
    ]


def test_no_more_sessions_then_a_session_open_disconnects() -> None:
    pair = _pair()
    pair.client.send(ev.GlobalRequest(request=ev.NoMoreSessions()))
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.ChannelOpen(channel=pair.client.new_channel_id(), kind="session"))
    pair.pump()
    assert pair.take(pair.server) == []
    # direct-tcpip is still fine ...
    pair.client.send(ev.ChannelOpen(channel=pair.client.new_channel_id(), kind="direct-tcpip"))
    pair.pump()
    assert len(pair.take(pair.server)) == 1
    # ... a session is an attack (OpenSSH PROTOCOL §2.2).
    _violation(pair, bytes(m.ChannelOpen("session", 9, 1000, 1000)))


def test_unknown_global_request() -> None:
    pair = _pair()
    inject(
        pair.server, bytes(m.GlobalRequest("hostkeys-00@openssh.com", False, b"\x00\x00\x00\x01k"))
    )
    pair.pump()
    assert pair.take(pair.client) == [
        ev.GlobalRequest(
            request=ev.UnknownGlobalRequest(
                name="hostkeys-00@openssh.com", data=b"\x00\x00\x00\x01k"
            )
        )
    ]
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.GlobalRequestReply(ok=False))  # no reply was wanted


def test_unsolicited_global_reply_disconnects() -> None:
    pair = _pair()
    _violation(pair, bytes(m.RequestSuccess()))


def test_data_crossing_our_close_is_dropped() -> None:
    pair = _pair()
    cid, sid = pair.open_session()
    pair.server.send(ev.ChannelData(channel=sid, data=b"in flight"))
    pair.client.send(ev.ChannelClose(channel=cid))
    pair.pump()
    assert pair.take(pair.client) == []
    pair.server.send(ev.ChannelClose(channel=sid))
    pair.pump()
    assert pair.take(pair.client) == [ev.ChannelClose(channel=cid)]


def test_channel_ids_must_come_from_new_channel_id() -> None:
    pair = _pair()
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.ChannelOpen(channel=5, kind="session"))


def test_channel_events_before_auth_are_refused_locally() -> None:
    pair = ConnectionPair()
    pair.handshake()
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.ChannelOpen(channel=0, kind="session"))
