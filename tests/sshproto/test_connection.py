"""The Connection API contract: states, errors, timers, and a stateful channel model."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trioport.errors import (
    HostKeyNotVerifiable,
    LocalProtocolError,
    RemoteProtocolError,
    TrioportError,
)
from trioport.sshproto import Connection, Role, TransportState
from trioport.sshproto import events as ev

from .helpers import (
    DETERMINISTIC_KEX,
    ConnectionPair,
    authenticated_pair,
    client_config,
    make_rng,
    publickey_request,
    server_config,
)


def test_fresh_connection_state_and_output() -> None:
    client = Connection(client_config(software_version="test_1.0"), rng=make_rng("c"))
    assert client.state is TransportState.VERSION
    assert client.session_id is None and client.peer_version is None
    assert not client.is_authenticated and client.username is None and not client.closed
    assert client.negotiated == {}
    assert client.get_timer() is None
    out = client.data_to_send()
    assert out.startswith(b"SSH-2.0-test_1.0\r\n")
    assert client.data_to_send() == b""
    assert client.next_event() is None


@pytest.mark.parametrize(
    "event",
    [
        ev.ChannelOpen(channel=0, kind="session"),
        ev.UserauthSuccess(),
        ev.GlobalRequest(request=ev.KeepAlive()),
        ev.Debug(message="strict kex would kill us"),
        ev.VersionReceived(version="SSH-2.0-x"),
        ev.KexComplete(session_id=b"", algorithms={}, host_key=b"", first=True, strict=True),
    ],
)
def test_events_illegal_before_keys_are_refused_and_change_nothing(event: ev.Event) -> None:
    server = Connection(server_config(), rng=make_rng("s"))
    before = server.data_to_send()
    with pytest.raises(LocalProtocolError):
        server.send(event)
    assert server.state is TransportState.VERSION
    assert server.data_to_send() == b"" and before


def test_client_cannot_send_server_answers() -> None:
    pair = authenticated_pair()
    for event in (ev.UserauthSuccess(), ev.UserauthPKOk(algorithm="a", public_key=b"")):
        with pytest.raises(LocalProtocolError):
            pair.client.send(event)


def test_after_an_error_every_call_raises_but_the_disconnect_is_delivered() -> None:
    server = Connection(server_config(), rng=make_rng("s"))
    server.receive_data(b"SSH-1.0-x\r\n")
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    assert server.closed and server.state is TransportState.ERROR
    assert server.data_to_send().endswith(b"")  # still callable
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    for call in (
        lambda: server.receive_data(b"x"),
        lambda: server.send(ev.Disconnect(code=11)),
        lambda: server.new_channel_id(),
        lambda: server.handle_timer(5.0),
        lambda: server.rekey(),
    ):
        with pytest.raises(LocalProtocolError):
            call()


def test_receive_after_eof_is_a_local_error() -> None:
    server = Connection(server_config(), rng=make_rng("s"))
    server.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"late")
    assert server.next_event() == ev.ConnectionLost()


def test_eof_in_the_middle_of_a_packet_is_connection_lost() -> None:
    pair = authenticated_pair()
    pair.client.send(ev.Debug(message="cut short"))
    data = pair.client.data_to_send()
    pair.server.receive_data(data[:10])
    pair.server.receive_data(b"")
    assert pair.server.next_event() == ev.ConnectionLost()
    assert pair.server.closed and pair.server.next_event() is None


def test_our_disconnect_closes_the_connection() -> None:
    pair = authenticated_pair()
    pair.server.send(ev.Disconnect(code=11, description="maintenance"))
    assert pair.server.closed and pair.server.state is TransportState.CLOSED
    assert pair.server.next_event() is None
    assert pair.server.get_timer() is None
    pair.transfer(pair.server)
    assert pair.take(pair.client) == [ev.Disconnect(code=11, description="maintenance")]


def test_host_key_policy_errors_become_host_key_not_verifiable() -> None:
    def policy(blob: bytes, algorithm: str) -> bool:
        raise TrioportError("no known_hosts entry")

    pair = ConnectionPair(client={"verify_host_key": policy})
    with pytest.raises(HostKeyNotVerifiable):
        pair.pump()


def test_acknowledging_a_gone_channel_is_ignored() -> None:
    pair = authenticated_pair()
    pair.server.acknowledge_received_data(42, 10)
    with pytest.raises(LocalProtocolError):
        pair.server.acknowledge_received_data(0, -1)


def test_a_whole_session_fed_byte_by_byte() -> None:
    pair = ConnectionPair(kex_algorithms=DETERMINISTIC_KEX)
    pair.handshake(byte_at_a_time=True)
    pair.client.send(publickey_request(pair.client))
    pair.pump(byte_at_a_time=True)
    pair.server.send(ev.UserauthSuccess())
    pair.pump(byte_at_a_time=True)
    cid = pair.client.new_channel_id()
    pair.client.send(ev.ChannelOpen(channel=cid, kind="session"))
    pair.pump(byte_at_a_time=True)
    pair.server.send(ev.ChannelOpenConfirmation(channel=0))
    pair.pump(byte_at_a_time=True)
    pair.client.send(ev.ChannelData(channel=cid, data=b"typed slowly"))
    pair.pump(byte_at_a_time=True)
    assert ev.ChannelData(channel=0, data=b"typed slowly") in pair.events[pair.server]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=300), st.integers(0, 4))
def test_garbage_after_the_handshake_only_raises_remote_protocol_error(
    garbage: bytes, where: int
) -> None:
    # h11's fuzz invariant: parse it or raise RemoteProtocolError, nothing else.
    pair = ConnectionPair(kex_algorithms=DETERMINISTIC_KEX, seed="fuzz")
    victim = pair.server
    if where:
        pair.handshake()
        victim = [pair.server, pair.client][where % 2]
    victim.receive_data(garbage)
    try:
        while victim.next_event() is not None:
            pass
    except RemoteProtocolError:
        assert victim.state is TransportState.ERROR


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_as_the_first_bytes(garbage: bytes) -> None:
    for role in Role:
        cfg = server_config() if role is Role.SERVER else client_config()
        conn = Connection(cfg, rng=make_rng("fuzz"))
        conn.receive_data(garbage)
        conn.receive_data(b"")
        try:
            while conn.next_event() is not None:
                pass
        except RemoteProtocolError:
            pass


# --- a stateful model of channels --------------------------------------------------------------


class ChannelModel(RuleBasedStateMachine):
    """Random opens, data, acknowledgements, EOFs, closes and rekeys, both directions.

    Invariants: data arrives complete and in order, nothing after EOF, windows never
    negative, and an id is reused only after CLOSE went both ways.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pair = authenticated_pair(
            seed="model", kex_algorithms=DETERMINISTIC_KEX, window_size=4096, max_packet=1024
        )
        self.pair.on_event = self._on_event
        c, s = self.pair.client, self.pair.server
        # Per connection: our id -> the peer's id (and back through the peer's map).
        self.peer_of: dict[Connection, dict[int, int]] = {c: {}, s: {}}
        self.sent: dict[tuple[Connection, int], bytearray] = {}
        self.received: dict[tuple[Connection, int], bytearray] = {}
        self.unacked: dict[tuple[Connection, int], int] = {}
        self.eof_sent: set[tuple[Connection, int]] = set()
        self.eof_seen: set[tuple[Connection, int]] = set()
        self.close_sent: set[tuple[Connection, int]] = set()
        self.close_seen: set[tuple[Connection, int]] = set()
        self.opening: dict[Connection, int] = {}

    def _on_event(self, conn: Connection, event: ev.Event) -> None:
        match event:
            case ev.ChannelOpen():
                conn.send(ev.ChannelOpenConfirmation(channel=event.channel))
                opener = self.pair.other(conn)
                theirs = self.opening.pop(opener)
                self.peer_of[opener][theirs] = event.channel
                self.peer_of[conn][event.channel] = theirs
                for key in ((conn, event.channel), (opener, theirs)):
                    assert key not in self.sent, "a live id was reused"
                    self.sent[key] = bytearray()
                    self.received[key] = bytearray()
                    self.unacked[key] = 0
            case ev.ChannelData():
                key = (conn, event.channel)
                assert key not in self.eof_seen, "data after EOF"
                self.received[key] += event.data
                self.unacked[key] += len(event.data)
            case ev.ChannelEOF():
                self.eof_seen.add((conn, event.channel))
            case ev.ChannelClose():
                self.close_seen.add((conn, event.channel))
                self._maybe_forget(conn, event.channel)

    def _maybe_forget(self, conn: Connection, cid: int) -> None:
        key = (conn, cid)
        if key in self.close_sent and key in self.close_seen:
            for table in (self.sent, self.received, self.unacked):
                del table[key]
            self.eof_sent.discard(key)
            self.eof_seen.discard(key)
            self.close_sent.discard(key)
            self.close_seen.discard(key)
            del self.peer_of[conn][cid]

    def _side(self, client: bool) -> Connection:
        return self.pair.client if client else self.pair.server

    def _live(self, conn: Connection) -> list[int]:
        return sorted(cid for (c, cid) in self.sent if c is conn)

    @rule(client=st.booleans())
    def open(self, client: bool) -> None:
        conn = self._side(client)
        cid = conn.new_channel_id()
        assert (conn, cid) not in self.sent
        self.opening[conn] = cid
        conn.send(ev.ChannelOpen(channel=cid, kind="session"))
        self.pair.pump()

    @rule(client=st.booleans(), pick=st.integers(0, 50), size=st.integers(1, 3000))
    def send(self, client: bool, pick: int, size: int) -> None:
        conn = self._side(client)
        live = [c for c in self._live(conn) if (conn, c) not in self.eof_sent | self.close_sent]
        if not live:
            return
        cid = live[pick % len(live)]
        n = min(size, conn.send_window(cid), conn.max_packet(cid))
        assert n >= 0
        data = bytes((len(self.sent[(conn, cid)]) + i) % 251 for i in range(n))
        if n < size and conn.send_window(cid) < size and conn.max_packet(cid) >= size:
            with pytest.raises(LocalProtocolError):
                conn.send(ev.ChannelData(channel=cid, data=bytes(size)))
        conn.send(ev.ChannelData(channel=cid, data=data))
        self.sent[(conn, cid)] += data

    @rule(client=st.booleans(), pick=st.integers(0, 50))
    def consume(self, client: bool, pick: int) -> None:
        conn = self._side(client)
        live = [c for c in self._live(conn) if self.unacked[(conn, c)]]
        if live:
            cid = live[pick % len(live)]
            conn.acknowledge_received_data(cid, self.unacked[(conn, cid)])
            self.unacked[(conn, cid)] = 0

    @rule(client=st.booleans(), pick=st.integers(0, 50))
    def eof(self, client: bool, pick: int) -> None:
        conn = self._side(client)
        live = [c for c in self._live(conn) if (conn, c) not in self.eof_sent | self.close_sent]
        if live:
            cid = live[pick % len(live)]
            conn.send(ev.ChannelEOF(channel=cid))
            self.eof_sent.add((conn, cid))

    @rule(client=st.booleans(), pick=st.integers(0, 50))
    def close(self, client: bool, pick: int) -> None:
        conn = self._side(client)
        live = [c for c in self._live(conn) if (conn, c) not in self.close_sent]
        if live:
            cid = live[pick % len(live)]
            conn.send(ev.ChannelClose(channel=cid))
            self.close_sent.add((conn, cid))
            self._maybe_forget(conn, cid)

    @rule(client=st.booleans())
    def rekey(self, client: bool) -> None:
        self._side(client).rekey()

    @precondition(lambda self: True)
    @rule()
    def deliver(self) -> None:
        self.pair.pump()
        for (conn, cid), got in self.received.items():
            peer = self.pair.other(conn)
            theirs = self.peer_of[conn].get(cid)
            if theirs is None or (peer, theirs) not in self.sent:
                continue
            if (conn, cid) in self.close_sent:
                continue  # we let go: what crossed our CLOSE was dropped
            assert bytes(got) == bytes(self.sent[(peer, theirs)])

    @invariant()
    def windows_are_never_negative(self) -> None:
        for conn in (self.pair.client, self.pair.server):
            for cid in self._live(conn):
                if (conn, cid) not in self.close_sent:
                    assert conn.send_window(cid) >= 0


ChannelModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_channel_model = ChannelModel.TestCase
