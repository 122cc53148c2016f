"""User authentication (RFC 4252, RFC 4256) through a ConnectionPair."""

from __future__ import annotations

import pytest

from trioport.errors import DisconnectReason, LocalProtocolError, RemoteProtocolError
from trioport.sshproto import TransportState, wire
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m
from trioport.sshproto.certs import VALID_FOREVER, CertType, sign_certificate
from trioport.sshproto.keys import PrivateKey

from .helpers import (
    OTHER_KEY,
    USER_KEY,
    ConnectionPair,
    ed25519_key,
    inject,
    publickey_request,
)


def _ready() -> ConnectionPair:
    pair = ConnectionPair(seed="auth")
    pair.handshake()
    pair.take(pair.client)
    pair.take(pair.server)
    return pair


def _server_requests(pair: ConnectionPair) -> list[ev.UserauthRequest]:
    return [e for e in pair.take(pair.server) if isinstance(e, ev.UserauthRequest)]


def test_query_then_sign() -> None:
    pair = _ready()
    pair.client.send(publickey_request(pair.client, sign=False))
    pair.pump()
    (query,) = _server_requests(pair)
    assert query.signature_ok is None and query.public_key == USER_KEY.public.blob
    pair.server.send(ev.UserauthPKOk(algorithm=query.algorithm, public_key=query.public_key))
    pair.pump()
    assert pair.take(pair.client) == [
        ev.UserauthPKOk(algorithm="ssh-ed25519", public_key=USER_KEY.public.blob)
    ]
    pair.client.send(publickey_request(pair.client))
    pair.pump()
    (signed,) = _server_requests(pair)
    assert signed.signature_ok is True and signed.username == "alice"
    assert not pair.server.is_authenticated
    pair.server.send(ev.UserauthSuccess())
    pair.pump()
    assert pair.take(pair.client) == [ev.UserauthSuccess()]
    for conn in (pair.client, pair.server):
        assert conn.is_authenticated and conn.username == "alice"
        assert conn.state is TransportState.CONNECTED


def test_wrong_signature_never_reaches_the_driver() -> None:
    pair = _ready()
    pair.client.send(publickey_request(pair.client, signer=OTHER_KEY))
    pair.pump()
    assert pair.take(pair.server) == []
    assert pair.take(pair.client) == [ev.UserauthFailure(methods=("publickey",))]


def test_decision_is_on_the_key_that_signed() -> None:
    # x/crypto CVE-2024-45337: query key A, then sign with key B.
    pair = _ready()
    pair.client.send(publickey_request(pair.client, USER_KEY, sign=False))
    pair.pump()
    (query,) = _server_requests(pair)
    pair.server.send(ev.UserauthPKOk(algorithm=query.algorithm, public_key=query.public_key))
    pair.client.send(publickey_request(pair.client, OTHER_KEY))
    pair.pump()
    (signed,) = _server_requests(pair)
    assert signed.signature_ok is True
    assert signed.public_key == OTHER_KEY.public.blob != USER_KEY.public.blob


def test_signature_over_other_data_fails() -> None:
    pair = _ready()
    request = publickey_request(pair.client)
    forged = USER_KEY.sign(b"not the session data")
    pair.client.send(
        ev.UserauthRequest(
            username="alice",
            method="publickey",
            public_key=request.public_key,
            algorithm=request.algorithm,
            signature=forged,
        )
    )
    pair.pump()
    assert pair.take(pair.server) == []


def test_algorithm_must_match_the_key_type() -> None:
    pair = _ready()
    data = pair.client.publickey_data_to_sign("alice", "rsa-sha2-256", USER_KEY.public.blob)
    pair.client.send(
        ev.UserauthRequest(
            username="alice",
            method="publickey",
            public_key=USER_KEY.public.blob,
            algorithm="rsa-sha2-256",
            signature=USER_KEY.sign(data),
        )
    )
    pair.pump()
    assert pair.take(pair.server) == []
    assert pair.take(pair.client) == [ev.UserauthFailure(methods=("publickey",))]


def test_sha1_rsa_signatures_are_refused_by_default() -> None:
    rsa = PrivateKey.generate("ssh-rsa", bits=2048)
    pair = _ready()
    data = pair.client.publickey_data_to_sign("alice", "ssh-rsa", rsa.public.blob)
    pair.client.send(
        ev.UserauthRequest(
            username="alice",
            method="publickey",
            public_key=rsa.public.blob,
            algorithm="ssh-rsa",
            signature=rsa.sign(data, "ssh-rsa"),
        )
    )
    pair.pump()
    assert pair.take(pair.server) == []
    assert pair.take(pair.client) == [ev.UserauthFailure(methods=("publickey",))]
    pair.client.send(_rsa_sha2(pair, rsa))
    pair.pump()
    (accepted,) = _server_requests(pair)
    assert accepted.algorithm == "rsa-sha2-512" and accepted.signature_ok


def _rsa_sha2(pair: ConnectionPair, key: PrivateKey) -> ev.UserauthRequest:
    data = pair.client.publickey_data_to_sign("alice", "rsa-sha2-512", key.public.blob)
    return ev.UserauthRequest(
        username="alice",
        method="publickey",
        public_key=key.public.blob,
        algorithm="rsa-sha2-512",
        signature=key.sign(data, "rsa-sha2-512"),
    )


def test_too_many_failures_disconnect() -> None:
    pair = _ready()
    for _ in range(6):
        pair.client.send(publickey_request(pair.client, signer=OTHER_KEY))
    with pytest.raises(RemoteProtocolError) as info:
        pair.pump()
    assert info.value.code is DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE
    assert info.value.description == "Too many authentication failures"
    pair.transfer(pair.server)
    events = pair.take(pair.client)
    assert events.count(ev.UserauthFailure(methods=("publickey",))) == 5
    assert events[-1] == ev.Disconnect(code=14, description="Too many authentication failures")


def test_first_none_is_free_and_the_driver_failures_count() -> None:
    pair = _ready()
    pair.client.send(ev.UserauthRequest(username="alice", method="none"))
    pair.pump()
    assert pair.take(pair.client) == [ev.UserauthFailure(methods=("publickey",))]
    for _ in range(5):
        pair.client.send(publickey_request(pair.client))
        pair.pump()
        assert _server_requests(pair)
        pair.server.send(ev.UserauthFailure(methods=("publickey",)))
    assert not pair.server.closed
    pair.client.send(publickey_request(pair.client))
    pair.pump()
    pair.server.send(ev.UserauthFailure(methods=("publickey",)))  # the sixth
    assert pair.server.state is TransportState.ERROR
    with pytest.raises(RemoteProtocolError):
        pair.server.next_event()
    pair.transfer(pair.server)
    assert pair.take(pair.client)[-1].code == DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE


def test_partial_success_does_not_count() -> None:
    pair = _ready()
    for _ in range(8):
        pair.client.send(publickey_request(pair.client))
        pair.pump()
        assert _server_requests(pair)
        pair.server.send(ev.UserauthFailure(methods=("password",), partial=True))
        pair.pump()
        assert pair.take(pair.client) == [ev.UserauthFailure(methods=("password",), partial=True)]
    assert not pair.server.closed


@pytest.mark.parametrize(("username", "service"), [("bob", "ssh-connection"), ("alice", "x")])
def test_username_or_service_change_disconnects(username: str, service: str) -> None:
    pair = _ready()
    pair.client.send(ev.UserauthRequest(username="alice", method="none"))
    pair.pump()
    pair.client.send(ev.UserauthRequest(username=username, method="none", service=service))
    with pytest.raises(RemoteProtocolError) as info:
        pair.pump()
    assert info.value.code is DisconnectReason.PROTOCOL_ERROR
    assert "change of username or service" in info.value.description


def test_unknown_service_in_first_request() -> None:
    pair = _ready()
    pair.client.send(ev.UserauthRequest(username="alice", method="none", service="nope"))
    with pytest.raises(RemoteProtocolError) as info:
        pair.pump()
    assert info.value.code is DisconnectReason.SERVICE_NOT_AVAILABLE


def test_method_not_offered_fails_without_an_event() -> None:
    pair = _ready()
    pair.client.send(ev.UserauthRequest(username="alice", method="password", password="pw"))
    pair.pump()
    assert pair.take(pair.server) == []
    assert pair.take(pair.client) == [ev.UserauthFailure(methods=("publickey",))]


def test_password_when_enabled() -> None:
    pair = ConnectionPair(server={"auth_methods": ("publickey", "password")})
    pair.handshake()
    pair.client.send(ev.UserauthRequest(username="alice", method="password", password="s3cret"))
    pair.pump()
    (request,) = _server_requests(pair)
    assert (request.method, request.password) == ("password", "s3cret")
    pair.server.send(ev.UserauthSuccess())
    pair.pump()
    assert pair.client.is_authenticated


def test_keyboard_interactive() -> None:
    pair = ConnectionPair(server={"auth_methods": ("keyboard-interactive",)})
    pair.handshake()
    pair.client.send(
        ev.UserauthRequest(username="alice", method="keyboard-interactive", submethods="otp")
    )
    pair.pump()
    (request,) = _server_requests(pair)
    assert request.submethods == "otp"
    prompts = (("Password: ", False), ("TOTP code: ", True))
    pair.server.send(ev.UserauthInfoRequest(name="login", instruction="", prompts=prompts))
    pair.pump()
    (info,) = [e for e in pair.take(pair.client) if isinstance(e, ev.UserauthInfoRequest)]
    assert info.prompts == prompts
    pair.client.send(ev.UserauthInfoResponse(responses=("pw", "123456")))
    pair.pump()
    assert pair.take(pair.server) == [ev.UserauthInfoResponse(responses=("pw", "123456"))]
    pair.server.send(ev.UserauthSuccess())
    pair.pump()
    assert pair.client.is_authenticated and pair.server.username == "alice"


def test_keyboard_interactive_answer_count_must_match() -> None:
    pair = ConnectionPair(server={"auth_methods": ("keyboard-interactive",)})
    pair.handshake()
    pair.client.send(ev.UserauthRequest(username="alice", method="keyboard-interactive"))
    pair.pump()
    pair.server.send(ev.UserauthInfoRequest(name="", instruction="", prompts=(("a", False),)))
    pair.pump()
    pair.client.send(ev.UserauthInfoResponse(responses=("1", "2")))
    with pytest.raises(RemoteProtocolError):
        pair.pump()


def test_info_response_without_request_disconnects() -> None:
    pair = ConnectionPair(server={"auth_methods": ("keyboard-interactive",)})
    pair.handshake()
    pair.client.send(ev.UserauthRequest(username="alice", method="none"))
    pair.pump()
    inject(pair.client, bytes(m.UserauthInfoResponse(("x",))))
    with pytest.raises(RemoteProtocolError):
        pair.pump()


def test_banner_is_sent_when_auth_starts() -> None:
    pair = ConnectionPair(server={"banner": "Authorized use only\n"})
    pair.handshake()
    assert ev.UserauthBanner(message="Authorized use only\n") in pair.take(pair.client)


def test_request_sent_before_kex_is_held_until_service_accept() -> None:
    pair = ConnectionPair()
    pair.client.send(ev.UserauthRequest(username="alice", method="none"))
    pair.pump()
    assert ev.UserauthFailure(methods=("publickey",)) in pair.take(pair.client)


def test_first_request_follows_service_request_without_waiting_for_accept() -> None:
    """A login costs no round trip for SERVICE_ACCEPT: the request the driver makes
    as soon as the key exchange is done reaches the server in the same flight."""
    pair = ConnectionPair()
    pair.on_event = lambda conn, event: (
        conn.send(ev.UserauthRequest(username="alice", method="none"))
        if conn is pair.client and isinstance(event, ev.KexComplete)
        else None
    )
    # Up to the client's NEWKEYS: version, KEXINIT, ECDH_INIT, then the reply and NEWKEYS.
    while not any(isinstance(e, ev.KexComplete) for e in pair.events[pair.client]):
        assert pair.transfer(pair.client) + pair.transfer(pair.server)
    pair.transfer(pair.client)  # NEWKEYS, SERVICE_REQUEST and the request, in one go
    pair.transfer(pair.server)  # SERVICE_ACCEPT, then the failure of "none"
    assert ev.UserauthFailure(methods=("publickey",)) in pair.take(pair.client)


def test_pipelined_requests_are_answered_in_order() -> None:
    pair = _ready()
    pair.client.send(publickey_request(pair.client, sign=False))  # the driver decides
    pair.client.send(publickey_request(pair.client, signer=OTHER_KEY))  # the core fails it
    pair.pump()
    assert pair.take(pair.client) == []  # the failure waits behind the owed answer
    (query,) = _server_requests(pair)
    pair.server.send(ev.UserauthPKOk(algorithm=query.algorithm, public_key=query.public_key))
    pair.pump()
    assert pair.take(pair.client) == [
        ev.UserauthPKOk(algorithm="ssh-ed25519", public_key=USER_KEY.public.blob),
        ev.UserauthFailure(methods=("publickey",)),
    ]


def test_driver_answers_must_match_a_request() -> None:
    pair = _ready()
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.UserauthSuccess())
    pair.client.send(publickey_request(pair.client, sign=False))
    pair.pump()
    (query,) = _server_requests(pair)
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.UserauthSuccess())  # a query cannot succeed
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.UserauthPKOk(algorithm="ssh-ed25519", public_key=b"other key"))
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.UserauthInfoRequest(name="", instruction="", prompts=()))
    pair.server.send(ev.UserauthPKOk(algorithm=query.algorithm, public_key=query.public_key))


def test_late_requests_after_success_are_ignored() -> None:
    # RFC 4252 §5.1: "SHOULD be silently ignored".
    pair = _ready()
    pair.client.send(publickey_request(pair.client))
    pair.pump()
    pair.server.send(ev.UserauthSuccess())
    pair.pump()
    pair.take(pair.server)
    inject(pair.client, bytes(m.UserauthRequest("root", "ssh-connection", "none")))
    pair.pump()
    assert pair.take(pair.server) == []
    assert pair.server.username == "alice" and not pair.server.closed


def test_client_refuses_success_it_never_asked_for() -> None:
    pair = _ready()
    inject(pair.server, bytes(m.UserauthSuccess()))
    with pytest.raises(RemoteProtocolError):
        pair.pump()
    assert not pair.client.is_authenticated


def test_publickey_data_to_sign_is_rfc_4252_section_7() -> None:
    pair = _ready()
    data = pair.client.publickey_data_to_sign("alice", "ssh-ed25519", b"BLOB")
    r = wire.Reader(data)
    assert r.string() == pair.client.session_id
    assert r.byte() == 50
    assert [r.text() for _ in range(3)] == ["alice", "ssh-connection", "publickey"]
    assert r.boolean() is True
    assert (r.text(), r.string()) == ("ssh-ed25519", b"BLOB")
    r.end()


def test_user_certificate_is_verified_with_the_certified_key() -> None:
    ca = ed25519_key("user CA")
    cert = sign_certificate(
        ca,
        USER_KEY.public,
        cert_type=CertType.USER,
        key_id="alice",
        principals=["alice"],
        valid_after=0,
        valid_before=VALID_FOREVER,
        nonce=bytes(32),
    )
    algorithm = "ssh-ed25519-cert-v01@openssh.com"
    pair = _ready()
    data = pair.client.publickey_data_to_sign("alice", algorithm, cert.blob)
    for signer in (OTHER_KEY, USER_KEY):
        pair.client.send(
            ev.UserauthRequest(
                username="alice",
                method="publickey",
                public_key=cert.blob,
                algorithm=algorithm,
                signature=signer.sign(data),
            )
        )
    pair.pump()
    # Only the signature by the certified key reaches the driver, with the cert blob,
    # for the driver to check against its CAs.
    (request,) = _server_requests(pair)
    assert request.public_key == cert.blob and request.algorithm == algorithm
    assert request.signature_ok is True
    assert pair.take(pair.client) == [ev.UserauthFailure(methods=("publickey",))]
