"""The transport through a ConnectionPair: handshakes, determinism, versions, rekeys."""

from __future__ import annotations

import pytest

from trioport.errors import (
    ConfigError,
    DisconnectReason,
    HostKeyNotVerifiable,
    KeyExchangeFailed,
    LocalProtocolError,
    RemoteProtocolError,
)
from trioport.sshproto import Connection, HostKey, Role, TransportState
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m
from trioport.sshproto.certs import VALID_FOREVER, CertType, sign_certificate
from trioport.sshproto.ciphers import CIPHERS, MACS
from trioport.sshproto.kex import KEX_METHODS
from trioport.sshproto.keys import PrivateKey

from .helpers import (
    DETERMINISTIC_KEX,
    HOST_KEY,
    ConnectionPair,
    RawPeer,
    authenticated_pair,
    cleartext_messages,
    client_config,
    ed25519_key,
    inject,
    last_disconnect,
    make_rng,
    server_config,
)


def _kex_complete(pair: ConnectionPair, conn: Connection) -> list[ev.KexComplete]:
    return [e for e in pair.events[conn] if isinstance(e, ev.KexComplete)]


def _roundtrip_data(pair: ConnectionPair, payload: bytes = b"ping") -> None:
    pair.authenticate()
    cid, sid = pair.open_session()
    pair.client.send(ev.ChannelData(channel=cid, data=payload))
    pair.server.send(ev.ChannelData(channel=sid, data=payload[::-1]))
    pair.pump()
    assert ev.ChannelData(channel=sid, data=payload) in pair.take(pair.server)
    assert ev.ChannelData(channel=cid, data=payload[::-1]) in pair.take(pair.client)


# --- handshakes ------------------------------------------------------------------------


@pytest.mark.parametrize("kex", sorted(KEX_METHODS))
@pytest.mark.parametrize("cipher", sorted(CIPHERS))
def test_handshake_for_every_kex_and_cipher(kex: str, cipher: str) -> None:
    pair = ConnectionPair(kex_algorithms=[kex], ciphers=[cipher], macs=sorted(MACS))
    _roundtrip_data(pair)
    for conn in (pair.client, pair.server):
        algs = conn.negotiated
        assert algs["kex"] == kex
        assert algs["cipher_c2s"] == algs["cipher_s2c"] == cipher
        assert conn.strict_kex


@pytest.mark.parametrize("mac", sorted(MACS))
@pytest.mark.parametrize("cipher", ["aes128-ctr", "aes192-ctr", "aes256-ctr"])
def test_handshake_for_every_mac_with_ctr(cipher: str, mac: str) -> None:
    pair = ConnectionPair(kex_algorithms=DETERMINISTIC_KEX, ciphers=[cipher], macs=[mac])
    _roundtrip_data(pair, b"x" * 1000)
    assert pair.client.negotiated["mac_c2s"] == pair.server.negotiated["mac_s2c"] == mac


def test_aead_ignores_the_mac_lists() -> None:
    # PROTOCOL §1.6: with AES-GCM there need not be a matching MAC at all.
    pair = ConnectionPair(
        ciphers=["aes256-gcm@openssh.com"],
        client={"macs": ["hmac-sha2-512-etm@openssh.com"]},
        server={"macs": ["hmac-sha2-256-etm@openssh.com"]},
    )
    pair.handshake()
    assert pair.client.negotiated["mac_c2s"] == ""


@pytest.fixture(scope="module")
def host_keys() -> dict[str, PrivateKey]:
    return {
        "ssh-ed25519": HOST_KEY,
        "ssh-rsa": PrivateKey.generate("ssh-rsa", bits=2048),
        "ecdsa-sha2-nistp256": PrivateKey.generate("ecdsa-sha2-nistp256"),
    }


@pytest.mark.parametrize(
    ("algorithm", "key_type"),
    [
        ("ssh-ed25519", "ssh-ed25519"),
        ("rsa-sha2-512", "ssh-rsa"),
        ("rsa-sha2-256", "ssh-rsa"),
        ("ssh-rsa", "ssh-rsa"),
        ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
    ],
)
def test_every_host_key_algorithm(
    host_keys: dict[str, PrivateKey], algorithm: str, key_type: str
) -> None:
    seen: list[tuple[bytes, str]] = []

    def verify(blob: bytes, alg: str) -> bool:
        seen.append((blob, alg))
        return True

    pair = ConnectionPair(
        host_key_algorithms=[algorithm],
        client={"verify_host_key": verify},
        server={"host_keys": [HostKey(host_keys[key_type])]},
    )
    pair.handshake()
    assert seen == [(host_keys[key_type].public.blob, algorithm)]
    assert pair.client.host_key == host_keys[key_type].public.blob


def test_server_offers_only_algorithms_it_has_keys_for(host_keys: dict[str, PrivateKey]) -> None:
    pair = ConnectionPair(
        server={"host_keys": [HostKey(host_keys["ssh-rsa"])]},
        client={"host_key_algorithms": ["ssh-ed25519", "rsa-sha2-256", "rsa-sha2-512"]},
    )
    pair.handshake()
    # The client prefers ed25519, but the server has no such key.
    assert pair.client.negotiated["host_key"] == "rsa-sha2-256"


def test_server_without_a_usable_host_key_is_a_config_error() -> None:
    ecdsa = PrivateKey.generate("ecdsa-sha2-nistp256")
    with pytest.raises(LocalProtocolError):
        Connection(server_config(host_keys=[HostKey(ecdsa)]), rng=make_rng("x"))
    with pytest.raises(ConfigError):
        server_config(host_keys=[])


def test_handshake_is_deterministic_byte_for_byte() -> None:
    def run() -> tuple[bytes, bytes]:
        pair = ConnectionPair(kex_algorithms=DETERMINISTIC_KEX, seed="replay")
        pair.authenticate()
        cid, _ = pair.open_session()
        pair.client.send(ev.ChannelData(channel=cid, data=b"same bytes"))
        pair.pump()
        return bytes(pair.wire[pair.client]), bytes(pair.wire[pair.server])

    first, second = run(), run()
    assert first == second
    assert len(first[0]) > 1000


def test_handshake_byte_at_a_time_matches_one_chunk() -> None:
    whole = ConnectionPair(kex_algorithms=DETERMINISTIC_KEX, seed="bytes")
    whole.handshake()
    trickle = ConnectionPair(kex_algorithms=DETERMINISTIC_KEX, seed="bytes")
    trickle.handshake(byte_at_a_time=True)
    assert bytes(whole.wire[whole.client]) == bytes(trickle.wire[trickle.client])
    assert bytes(whole.wire[whole.server]) == bytes(trickle.wire[trickle.server])
    assert trickle.client.session_id == whole.client.session_id is not None


def test_kex_complete_reports_the_exchange() -> None:
    pair = ConnectionPair(kex_algorithms=DETERMINISTIC_KEX)
    pair.handshake()
    (c_done,) = _kex_complete(pair, pair.client)
    (s_done,) = _kex_complete(pair, pair.server)
    assert c_done.first and c_done.strict
    assert c_done.session_id == s_done.session_id == pair.client.session_id
    assert c_done.host_key == HOST_KEY.public.blob
    assert c_done.algorithms == s_done.algorithms == pair.client.negotiated
    assert pair.client.peer_version == "SSH-2.0-trioport_0.1"
    assert pair.client.state is TransportState.USERAUTH
    assert pair.server.state is TransportState.USERAUTH


def test_client_gets_server_sig_algs() -> None:
    pair = ConnectionPair(server={"pubkey_algorithms": ["ssh-ed25519", "rsa-sha2-512"]})
    pair.handshake()
    infos = [e for e in pair.events[pair.client] if isinstance(e, ev.ExtInfoReceived)]
    assert infos == [
        ev.ExtInfoReceived(extensions={"server-sig-algs": b"ssh-ed25519,rsa-sha2-512"})
    ]
    assert pair.client.peer_extensions["server-sig-algs"] == b"ssh-ed25519,rsa-sha2-512"


def test_first_kexinit_advertises_strict_kex_and_ext_info() -> None:
    client = Connection(client_config(), rng=make_rng("c"))
    server = Connection(server_config(), rng=make_rng("s"))
    (c_init,) = cleartext_messages(client.data_to_send())
    (s_init,) = cleartext_messages(server.data_to_send())
    assert isinstance(c_init, m.KexInit) and isinstance(s_init, m.KexInit)
    assert "kex-strict-c-v00@openssh.com" in c_init.kex_algorithms
    assert "ext-info-c" in c_init.kex_algorithms
    assert "kex-strict-s-v00@openssh.com" in s_init.kex_algorithms
    assert s_init.server_host_key_algorithms == ("ssh-ed25519",)


def test_no_common_algorithm_is_key_exchange_failed() -> None:
    pair = ConnectionPair(client={"ciphers": ["aes256-ctr"]}, server={"ciphers": ["aes128-ctr"]})
    with pytest.raises(KeyExchangeFailed) as info:
        pair.transfer(pair.client)
    assert info.value.code is DisconnectReason.KEY_EXCHANGE_FAILED
    sent = cleartext_messages(pair.server.data_to_send())
    assert last_disconnect(sent) == m.Disconnect(3, "no matching cipher found")


def test_host_key_refused_by_policy() -> None:
    pair = ConnectionPair(client={"verify_host_key": lambda blob, alg: False})
    with pytest.raises(HostKeyNotVerifiable) as info:
        pair.pump()
    assert info.value.code is DisconnectReason.HOST_KEY_NOT_VERIFIABLE
    assert pair.client.state is TransportState.ERROR


# --- version exchange ---------------------------------------------------------------------


def _server_fed(data: bytes) -> Connection:
    server = Connection(server_config(), rng=make_rng("s"))
    server.receive_data(data)
    return server


@pytest.mark.parametrize(
    "line",
    [b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", b"SSH-1.99-old\r\n", b"SSH-2.0-lf_only\n"],
)
def test_accepted_version_lines(line: bytes) -> None:
    server = _server_fed(line)
    assert server.next_event() == ev.VersionReceived(version=line.rstrip().decode())


def test_client_skips_lines_before_the_version() -> None:
    client = Connection(client_config(), rng=make_rng("c"))
    client.receive_data(b"Welcome!\r\n" * 1024 + b"SSH-2.0-x\r\n")
    assert client.next_event() == ev.VersionReceived(version="SSH-2.0-x")


def test_client_refuses_1025_lines_before_the_version() -> None:
    client = Connection(client_config(), rng=make_rng("c"))
    client.receive_data(b"hi\r\n" * 1025 + b"SSH-2.0-x\r\n")
    with pytest.raises(RemoteProtocolError):
        client.next_event()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"SSH-1.5-ancient\r\n", DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED),
        (b"SSH-3.0-future\r\n", DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED),
        (b"SSH-2.0-" + b"a" * 250 + b"\r\n", DisconnectReason.PROTOCOL_ERROR),
        (b"SSH-2.0-" + b"a" * 300, DisconnectReason.PROTOCOL_ERROR),  # no newline yet
        (b"GET / HTTP/1.1\r\n", DisconnectReason.PROTOCOL_ERROR),  # junk first
        (b"SSH-2.0-\r\n", DisconnectReason.PROTOCOL_ERROR),  # no software version
        (b"SSH-2.0-bad\x01char\r\n", DisconnectReason.PROTOCOL_ERROR),
    ],
)
def test_refused_version_lines(data: bytes, code: DisconnectReason) -> None:
    server = _server_fed(data)
    with pytest.raises(RemoteProtocolError) as info:
        server.next_event()
    assert info.value.code is code
    assert server.state is TransportState.ERROR
    assert last_disconnect(cleartext_messages(server.data_to_send())).code == code
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    with pytest.raises(LocalProtocolError):
        server.send(ev.Disconnect(code=11))


def test_eof_is_connection_lost() -> None:
    server = _server_fed(b"SSH-2.0-x\r\n")
    assert isinstance(server.next_event(), ev.VersionReceived)
    server.receive_data(b"")
    assert server.next_event() == ev.ConnectionLost()
    assert server.closed
    assert server.next_event() is None


def test_disconnect_from_the_peer_closes() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.client.send(ev.Disconnect(code=DisconnectReason.BY_APPLICATION, description="bye"))
    assert pair.client.closed
    pair.transfer(pair.client)
    assert pair.take(pair.server)[-1] == ev.Disconnect(code=11, description="bye")
    assert pair.server.closed and pair.server.state is TransportState.CLOSED
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.Debug(message="too late"))


def test_debug_is_an_event_and_ignore_is_silent() -> None:
    pair = authenticated_pair()
    pair.client.send(ev.Debug(message="hello", always_display=True))
    inject(pair.client, bytes(m.Ignore(b"padding")))
    pair.pump()
    assert pair.take(pair.server) == [ev.Debug(message="hello", always_display=True)]


# --- rekeying -------------------------------------------------------------------------------


def _stream(pair: ConnectionPair, cid: int, sid: int, chunks: int, size: int = 1000) -> bytes:
    """Send ``chunks`` pieces client -> server with acknowledgement; return what arrived."""
    got = bytearray()
    for i in range(chunks):
        pair.client.send(ev.ChannelData(channel=cid, data=bytes([i % 256]) * size))
        pair.pump()
        for event in pair.take(pair.server):
            if isinstance(event, ev.ChannelData):
                got += event.data
                pair.server.acknowledge_received_data(sid, len(event.data))
    return bytes(got)


@pytest.mark.parametrize("initiator", ["client", "server"])
def test_rekey_in_the_middle_of_data_flow(initiator: str) -> None:
    pair = authenticated_pair()
    cid, _ = pair.open_session()
    session_id = pair.client.session_id
    keys_before = pair.client.negotiated
    side = pair.client if initiator == "client" else pair.server
    pair.client.send(ev.ChannelData(channel=cid, data=b"before "))
    side.rekey()
    # Data sent while our KEXINIT is out waits for NEWKEYS but is accounted now.
    pair.client.send(ev.ChannelData(channel=cid, data=b"during "))
    assert pair.client.send_window(cid) == 2 * 1024 * 1024 - 14
    pair.pump()
    pair.client.send(ev.ChannelData(channel=cid, data=b"after"))
    pair.pump()
    server_events = pair.take(pair.server)
    data = b"".join(e.data for e in server_events if isinstance(e, ev.ChannelData))
    assert data == b"before during after"
    rekeys = [e for e in server_events if isinstance(e, ev.KexComplete)]
    assert len(rekeys) == 1 and not rekeys[0].first
    assert pair.client.session_id == session_id  # the session id never changes
    assert pair.client.negotiated == keys_before


def test_rekey_after_rekey_bytes() -> None:
    pair = authenticated_pair(rekey_bytes=20_000)
    cid, sid = pair.open_session()
    got = _stream(pair, cid, sid, chunks=60)
    assert got == b"".join(bytes([i]) * 1000 for i in range(60))
    rekeys = [e for e in pair.events[pair.client] if isinstance(e, ev.KexComplete)]
    assert len(pair.take(pair.client)) >= 2
    assert len(rekeys) >= 2 and not any(r.first for r in rekeys)


def test_rekey_after_rekey_seconds() -> None:
    pair = authenticated_pair(rekey_seconds=60.0)
    assert pair.client.get_timer() == 60.0
    pair.client.handle_timer(59.0)
    assert pair.client.data_to_send() == b""
    pair.client.handle_timer(61.0)
    assert pair.client.get_timer() is None  # an exchange is running
    pair.pump()
    assert any(isinstance(e, ev.KexComplete) for e in pair.take(pair.server))
    assert pair.client.get_timer() == 121.0


def test_rekey_before_the_first_exchange_is_refused() -> None:
    client = Connection(client_config(), rng=make_rng("c"))
    with pytest.raises(LocalProtocolError):
        client.rekey()
    assert client.get_timer() is None


def test_strict_kex_resets_sequence_numbers_after_newkeys() -> None:
    pair = ConnectionPair(kex_algorithms=DETERMINISTIC_KEX)
    pair.handshake()
    t = pair.client._transport
    # Client sent NEWKEYS, SERVICE_REQUEST: one packet since the reset. Server sent
    # NEWKEYS, EXT_INFO and SERVICE_ACCEPT: the client read two since its reset.
    assert t._send_seq == 1
    assert t._recv_seq == 2


def test_rekey_when_both_sides_start_at_once() -> None:
    pair = authenticated_pair()
    pair.client.rekey()
    pair.server.rekey()
    pair.pump()
    assert sum(isinstance(e, ev.KexComplete) for e in pair.take(pair.client)) == 1
    assert sum(isinstance(e, ev.KexComplete) for e in pair.take(pair.server)) == 1
    cid, _ = pair.open_session()
    assert pair.client.send_window(cid) > 0


def test_host_key_change_during_rekey_is_refused() -> None:
    pair = authenticated_pair()
    other = PrivateKey.generate("ssh-ed25519")
    pair.server._transport.config = server_config(host_keys=[HostKey(other)])
    pair.server.rekey()
    with pytest.raises(HostKeyNotVerifiable):
        pair.pump()


def test_kexinit_with_wrong_guess_skips_the_guessed_packet() -> None:
    # RFC 4253 §7: first_kex_packet_follows with a wrong guess -> ignore that packet.
    raw = RawPeer()
    server = Connection(server_config(), rng=make_rng("s"))
    kexinit = raw.kexinit(
        role=Role.CLIENT,
        kex_algorithms=("ecdh-sha2-nistp256", "curve25519-sha256"),
        first_kex_packet_follows=True,
    )
    server.receive_data(raw.version + raw.packet(kexinit) + raw.packet(bytes(m.KexEcdhInit(b"x"))))
    assert isinstance(server.next_event(), ev.VersionReceived)
    assert server.next_event() is None  # the bogus guessed ECDH_INIT was skipped
    assert server.state is TransportState.KEX


def test_host_certificate_is_presented_for_cert_algorithms() -> None:
    ca = ed25519_key("host CA")
    cert = sign_certificate(
        ca,
        HOST_KEY.public,
        cert_type=CertType.HOST,
        key_id="node-1",
        principals=["node-1"],
        valid_after=0,
        valid_before=VALID_FOREVER,
        nonce=bytes(32),
    )
    seen: list[tuple[bytes, str]] = []

    def verify(blob: bytes, algorithm: str) -> bool:
        seen.append((blob, algorithm))
        return True

    pair = ConnectionPair(
        client={"verify_host_key": verify},
        server={"host_keys": [HostKey(HOST_KEY, cert.blob)]},
    )
    pair.handshake()
    assert seen == [(cert.blob, "ssh-ed25519-cert-v01@openssh.com")]
    assert pair.client.host_key == cert.blob
    # A client that does not ask for certificates gets the plain key.
    plain = ConnectionPair(
        client={"host_key_algorithms": ["ssh-ed25519"]},
        server={"host_keys": [HostKey(HOST_KEY, cert.blob)]},
    )
    plain.handshake()
    assert plain.client.host_key == HOST_KEY.public.blob
