"""A hostile peer against the core: the regression recipes of shared/SECURITY.md.

Every case must end the same way: the victim raises RemoteProtocolError with the
right code, queues a DISCONNECT carrying it, and emits no event for the bad message
(no channel is ever opened, no user ever authenticated).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from trioport.errors import DisconnectReason, MACError, RemoteProtocolError
from trioport.sshproto import Connection, Role, TransportState, wire
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m

from .helpers import (
    ConnectionPair,
    RawPeer,
    authenticated_pair,
    cleartext_messages,
    inject,
    last_disconnect,
    make_rng,
    publickey_request,
    server_config,
)

PROTOCOL_ERROR = DisconnectReason.PROTOCOL_ERROR

# Messages only a server may send, and only a client may send.
SERVER_ONLY = {
    "SERVICE_ACCEPT": bytes(m.ServiceAccept("ssh-userauth")),
    "USERAUTH_FAILURE": bytes(m.UserauthFailure(("publickey",))),
    "USERAUTH_SUCCESS": bytes(m.UserauthSuccess()),
    "USERAUTH_BANNER": bytes(m.UserauthBanner("hi")),
    "USERAUTH_PK_OK": bytes(m.UserauthPkOk("ssh-ed25519", b"k")),
    "KEX_ECDH_REPLY": bytes(m.KexEcdhReply(b"k", b"q", b"s")),
}
CLIENT_ONLY = {
    "SERVICE_REQUEST": bytes(m.ServiceRequest("ssh-userauth")),
    "USERAUTH_REQUEST": bytes(m.UserauthRequest("root", "ssh-connection", "none")),
    "USERAUTH_INFO_RESPONSE": bytes(m.UserauthInfoResponse(("x",))),
    "KEX_ECDH_INIT": bytes(m.KexEcdhInit(b"\x01" * 32)),
}
CONNECTION = {
    "CHANNEL_OPEN": bytes(m.ChannelOpen("session", 0, 2**20, 32768)),
    "CHANNEL_REQUEST": bytes(m.ChannelRequest(0, "exec", True, wire.string("touch /tmp/x"))),
    "GLOBAL_REQUEST": bytes(m.GlobalRequest("tcpip-forward", True, b"")),
    "CHANNEL_DATA": bytes(m.ChannelData(0, b"x")),
}


def _expect_disconnect(
    action: Callable[[], object], victim: Connection, code: DisconnectReason = PROTOCOL_ERROR
) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        action()
    assert info.value.code is code
    assert victim.state is TransportState.ERROR
    with pytest.raises(RemoteProtocolError):
        victim.next_event()
    return info.value


# --- before NEWKEYS: cleartext from a raw peer -----------------------------------------


def _raw_client_against_server(*payloads: bytes, strict: bool = True) -> tuple[Connection, list]:
    raw = RawPeer()
    server = Connection(server_config(), rng=make_rng("victim"))
    data = raw.version + raw.packet(raw.kexinit(role=Role.CLIENT, strict=strict))
    for payload in payloads:
        data += raw.packet(payload)
    server.receive_data(data)
    events: list[ev.Event] = []

    def run() -> None:
        while (event := server.next_event()) is not None:
            events.append(event)

    _expect_disconnect(run, server)
    assert last_disconnect(cleartext_messages(server.data_to_send())).code == PROTOCOL_ERROR
    return server, events


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "not-strict"])
@pytest.mark.parametrize(
    "payload",
    [
        *SERVER_ONLY.values(),
        CLIENT_ONLY["SERVICE_REQUEST"],
        CLIENT_ONLY["USERAUTH_REQUEST"],
        bytes(m.ExtInfo((("server-sig-algs", b"ssh-rsa"),))),
        *CONNECTION.values(),
        bytes(m.NewKeys()),  # before any exchange happened
    ],
    ids=[*SERVER_ONLY, "SERVICE_REQUEST", "USERAUTH_REQUEST", "EXT_INFO", *CONNECTION, "NEWKEYS"],
)
def test_messages_before_newkeys_disconnect(payload: bytes, strict: bool) -> None:
    # asyncssh CVE-2023-46445/46446, libssh CVE-2018-10933, Erlang CVE-2025-32433.
    _, events = _raw_client_against_server(payload, strict=strict)
    assert [type(e) for e in events] == [ev.VersionReceived]


@pytest.mark.parametrize("payload", [bytes(m.Ignore(b"")), bytes(m.Debug(False, "x"))])
def test_ignore_during_strict_initial_kex_disconnects(payload: bytes) -> None:
    # Terrapin CVE-2023-48795: strict KEX allows nothing unexpected, not even IGNORE.
    _raw_client_against_server(payload, strict=True)


def test_ignore_before_kexinit_under_strict_kex_disconnects() -> None:
    raw = RawPeer()
    server = Connection(server_config(), rng=make_rng("victim"))
    server.receive_data(
        raw.version
        + raw.packet(bytes(m.Ignore(b"shift")))
        + raw.packet(raw.kexinit(role=Role.CLIENT, strict=True))
    )
    assert isinstance(server.next_event(), ev.VersionReceived)
    err = _expect_disconnect(server.next_event, server)
    assert "not the first packet" in err.description


def test_ignore_during_kex_is_fine_without_strict_kex() -> None:
    raw = RawPeer()
    server = Connection(server_config(), rng=make_rng("victim"))
    server.receive_data(
        raw.version
        + raw.packet(bytes(m.Ignore(b"")))
        + raw.packet(raw.kexinit(role=Role.CLIENT, strict=False))
        + raw.packet(bytes(m.Debug(False, "still fine")))
    )
    events = [server.next_event(), server.next_event(), server.next_event()]
    assert events == [
        ev.VersionReceived(version="SSH-2.0-Hostile_1.0"),
        ev.Debug(message="still fine"),
        None,
    ]
    assert not server.strict_kex and server.state is TransportState.KEX


def test_sequence_number_wrap_during_initial_kex_disconnects() -> None:
    raw = RawPeer()
    server = Connection(server_config(), rng=make_rng("victim"))
    server._transport._recv_seq = 2**32 - 1  # as if 4 billion IGNOREs had come
    server.receive_data(raw.version + raw.packet(raw.kexinit(role=Role.CLIENT, strict=False)))
    assert isinstance(server.next_event(), ev.VersionReceived)
    err = _expect_disconnect(server.next_event, server)
    assert "wrapped" in err.description


def test_no_common_algorithm_is_key_exchange_failed() -> None:
    raw = RawPeer()
    server = Connection(server_config(), rng=make_rng("victim"))
    kexinit = raw.kexinit(role=Role.CLIENT, kex_algorithms=("diffie-hellman-group1-sha1",))
    server.receive_data(raw.version + raw.packet(kexinit))
    server.next_event()
    _expect_disconnect(server.next_event, server, DisconnectReason.KEY_EXCHANGE_FAILED)
    sent = cleartext_messages(server.data_to_send())
    assert last_disconnect(sent).code == DisconnectReason.KEY_EXCHANGE_FAILED


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"SSH-1.5-OpenSSH_1.2\r\n", DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED),
        (b"SSH-2.0-" + b"A" * 300 + b"\r\n", PROTOCOL_ERROR),
        (b"A" * 10_000, PROTOCOL_ERROR),
    ],
    ids=["ssh-1", "long-line", "no-newline"],
)
def test_bad_version_lines(line: bytes, code: DisconnectReason) -> None:
    server = Connection(server_config(), rng=make_rng("victim"))
    server.receive_data(line)
    _expect_disconnect(server.next_event, server, code)
    assert last_disconnect(cleartext_messages(server.data_to_send())).code == code


@pytest.mark.parametrize("length", [0, 4, 2**31, 256 * 1024 + 8, 2**32 - 1])
def test_bad_packet_lengths(length: int) -> None:
    server = Connection(server_config(), rng=make_rng("victim"))
    server.receive_data(b"SSH-2.0-x\r\n" + length.to_bytes(4, "big") + b"\x04" + bytes(64))
    server.next_event()
    _expect_disconnect(server.next_event, server)
    assert last_disconnect(cleartext_messages(server.data_to_send())).code == PROTOCOL_ERROR


def test_empty_payload_disconnects() -> None:
    server = Connection(server_config(), rng=make_rng("victim"))
    # packet_length 8: padding_length 7, no payload at all.
    server.receive_data(b"SSH-2.0-x\r\n" + (8).to_bytes(4, "big") + b"\x07" + bytes(7))
    server.next_event()
    _expect_disconnect(server.next_event, server)
    assert last_disconnect(cleartext_messages(server.data_to_send())).code == PROTOCOL_ERROR


# --- after NEWKEYS: encrypted, from a real peer gone bad ------------------------------------


def _attack(pair: ConnectionPair, attacker: Connection, payload: bytes, code: int = 2) -> None:
    """``attacker`` sends ``payload``; its peer must disconnect with ``code``."""
    victim = pair.other(attacker)
    inject(attacker, payload)
    _expect_disconnect(lambda: pair.transfer(attacker), victim, DisconnectReason(code))
    # The DISCONNECT is encrypted with the current keys: the attacker can read it.
    pair.transfer(victim)
    last = pair.take(attacker)[-1]
    assert isinstance(last, ev.Disconnect) and last.code == code


def _pair_in_service_state(hostile: bytes) -> ConnectionPair:
    """Keys are in place; the client sends ``hostile`` instead of SERVICE_REQUEST."""
    pair = ConnectionPair(seed="hostile")
    real_send = pair.client._send

    def replace_service_request(msg: m.Message) -> None:
        if isinstance(msg, m.ServiceRequest):
            inject(pair.client, hostile)
        else:
            real_send(msg)

    pair.client._send = replace_service_request  # type: ignore[method-assign]
    return pair


@pytest.mark.parametrize(
    "payload", [*SERVER_ONLY.values(), *CONNECTION.values()], ids=[*SERVER_ONLY, *CONNECTION]
)
def test_wrong_messages_in_service_state(payload: bytes) -> None:
    pair = _pair_in_service_state(payload)
    with pytest.raises(RemoteProtocolError) as info:
        pair.pump()
    assert info.value.code is PROTOCOL_ERROR
    assert pair.server.state is TransportState.ERROR
    assert not any(
        isinstance(e, ev.ChannelOpen | ev.UserauthRequest) for e in pair.events[pair.server]
    )


def test_service_request_for_ssh_connection_skipping_auth() -> None:
    pair = _pair_in_service_state(bytes(m.ServiceRequest("ssh-connection")))
    with pytest.raises(RemoteProtocolError) as info:
        pair.pump()
    assert info.value.code is DisconnectReason.SERVICE_NOT_AVAILABLE


def _pair_in_userauth_state() -> ConnectionPair:
    pair = ConnectionPair(seed="hostile")
    pair.handshake()
    assert pair.server.state is TransportState.USERAUTH
    pair.take(pair.client)
    pair.take(pair.server)
    return pair


@pytest.mark.parametrize(
    "payload", [*SERVER_ONLY.values(), *CONNECTION.values()], ids=[*SERVER_ONLY, *CONNECTION]
)
def test_wrong_messages_during_userauth(payload: bytes) -> None:
    # paramiko CVE-2018-7750 / CVE-2018-1000805, Erlang CVE-2025-32433.
    pair = _pair_in_userauth_state()
    _attack(pair, pair.client, payload)
    assert not pair.server.is_authenticated
    assert not any(isinstance(e, ev.ChannelOpen) for e in pair.events[pair.server])


def test_libssh_success_from_the_client_then_channel_open() -> None:
    # libssh CVE-2018-10933: 52 instead of a request, then CHANNEL_OPEN.
    pair = _pair_in_userauth_state()
    inject(pair.client, SERVER_ONLY["USERAUTH_SUCCESS"])
    inject(pair.client, CONNECTION["CHANNEL_OPEN"])
    _expect_disconnect(lambda: pair.transfer(pair.client), pair.server)
    assert not pair.server.is_authenticated
    assert pair.take(pair.server) == []


@pytest.mark.parametrize("payload", [*SERVER_ONLY.values()], ids=[*SERVER_ONLY])
def test_server_only_messages_after_auth(payload: bytes) -> None:
    pair = authenticated_pair(seed="hostile")
    _attack(pair, pair.client, payload)


@pytest.mark.parametrize("name", ["SERVICE_REQUEST", "USERAUTH_INFO_RESPONSE", "KEX_ECDH_INIT"])
def test_client_only_messages_to_a_client(name: str) -> None:
    pair = authenticated_pair(seed="hostile")
    _attack(pair, pair.server, CLIENT_ONLY[name])


def test_client_only_messages_to_a_client_during_userauth() -> None:
    pair = _pair_in_userauth_state()
    _attack(pair, pair.server, CLIENT_ONLY["USERAUTH_REQUEST"])


def test_channel_open_from_the_server_before_auth() -> None:
    pair = _pair_in_userauth_state()
    _attack(pair, pair.server, CONNECTION["CHANNEL_OPEN"])


def test_second_ext_info_after_newkeys_disconnects() -> None:
    # asyncssh CVE-2023-46445: EXT_INFO only in its slot.
    pair = ConnectionPair(seed="hostile")
    real_write = pair.server._transport._write

    def twice(payload: bytes) -> None:
        real_write(payload)
        if payload[0] == m.MsgId.EXT_INFO:
            real_write(payload)

    pair.server._transport._write = twice  # type: ignore[method-assign]
    with pytest.raises(RemoteProtocolError):
        pair.pump()
    assert pair.client.state is TransportState.ERROR


def test_late_ext_info_disconnects() -> None:
    pair = authenticated_pair(seed="hostile")
    _attack(pair, pair.server, bytes(m.ExtInfo((("server-sig-algs", b"ssh-rsa"),))))


def test_ext_info_from_a_client_disconnects() -> None:
    pair = _pair_in_userauth_state()
    _attack(pair, pair.client, bytes(m.ExtInfo((("x", b""),))))


def test_ext_info_in_auth_must_precede_success() -> None:
    pair = _pair_in_userauth_state()
    pair.client.send(publickey_request(pair.client))
    pair.pump()
    inject(pair.server, bytes(m.ExtInfo((("server-sig-algs", b"ssh-ed25519"),))))
    pair.server.send(ev.UserauthSuccess())  # RFC 8308 §2.4: legal right before SUCCESS
    pair.pump()
    assert pair.client.is_authenticated
    pair2 = _pair_in_userauth_state()
    inject(pair2.server, bytes(m.ExtInfo((("server-sig-algs", b"ssh-ed25519"),))))
    _attack(pair2, pair2.server, bytes(m.UserauthBanner("not SUCCESS")))


@pytest.mark.parametrize(
    "payload", [bytes(m.NewKeys()), CLIENT_ONLY["KEX_ECDH_INIT"]], ids=["NEWKEYS", "ECDH_INIT"]
)
def test_kex_messages_outside_an_exchange(payload: bytes) -> None:
    pair = authenticated_pair(seed="hostile")
    _attack(pair, pair.client, payload)


def test_connection_messages_after_the_peers_kexinit_disconnect() -> None:
    # RFC 4253 §7.1: after KEXINIT only kex messages until NEWKEYS.
    pair = authenticated_pair(seed="hostile")
    _, sid = pair.open_session()
    pair.client.rekey()
    inject(pair.client, bytes(m.ChannelData(sid, b"sneaky")))
    _expect_disconnect(lambda: pair.transfer(pair.client), pair.server)


def test_second_kexinit_during_an_exchange_disconnects() -> None:
    pair = authenticated_pair(seed="hostile")
    pair.client.rekey()
    inject(pair.client, pair.client._transport._our_kexinit_payload)
    _expect_disconnect(lambda: pair.transfer(pair.client), pair.server)


def test_unknown_message_before_auth_disconnects() -> None:
    pair = _pair_in_userauth_state()
    _attack(pair, pair.client, b"\xc8payload")


def test_unknown_message_after_auth_is_unimplemented() -> None:
    pair = authenticated_pair(seed="hostile")
    inject(pair.client, b"\xc8payload")
    pair.pump()
    assert not pair.server.closed and pair.take(pair.server) == []
    pair.server.send(ev.Debug(message="still here"))
    pair.pump()
    assert pair.take(pair.client) == [ev.Debug(message="still here")]


def test_corrupted_packet_is_a_mac_error() -> None:
    pair = authenticated_pair(seed="hostile")
    pair.client.send(ev.Debug(message="x" * 40))
    data = bytearray(pair.client.data_to_send())
    data[20] ^= 0x01
    pair.server.receive_data(bytes(data))
    with pytest.raises(MACError) as info:
        pair.server.next_event()
    assert info.value.code is DisconnectReason.MAC_ERROR


def test_malformed_known_channel_request_disconnects() -> None:
    pair = authenticated_pair(seed="hostile")
    _, sid = pair.open_session()
    _attack(pair, pair.client, bytes(m.ChannelRequest(sid, "exec", True, b"\x00\x00")))


def test_malformed_userauth_request_disconnects() -> None:
    pair = _pair_in_userauth_state()
    bad = m.UserauthRequest("alice", "ssh-connection", "publickey", b"\x01\x00\x00\x00\xff")
    _attack(pair, pair.client, bytes(bad))
