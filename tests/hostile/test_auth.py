"""Hostile user authentication against a real server.

OpenSSH's rules (auth2.c): at most MaxAuthTries (6) failures, then the connection
ends; the user name and service may not change between requests; only
ssh-userauth may be requested before login. And the decision follows the key that
signed, never a key that was only queried (x/crypto CVE-2024-45337).
"""

from __future__ import annotations

import pytest
import trio

from trioport.errors import DisconnectReason
from trioport.sshproto import events as ev
from trioport.sshproto import messages as m
from trioport.sshproto.keys import PrivateKey, signature_algorithm_for

from .conftest import TIMEOUT
from .peer import HostilePeer


def _signed(
    peer: HostilePeer,
    key: PrivateKey,
    *,
    signer: PrivateKey | None = None,
    username: str = "mallory",
    session_id: bytes | None = None,
) -> ev.UserauthRequest:
    """A publickey request offering ``key``, signed by ``signer`` (default: ``key``)."""
    algorithm = key.public.signature_algorithms()[0]
    data = peer.conn.publickey_data_to_sign(username, algorithm, key.public.blob)
    if session_id is not None:
        # RFC 4252 §7: the signed data starts with string(session_id).
        real = peer.conn.session_id
        assert real is not None
        data = data.replace(real, session_id, 1)
    signature = (signer or key).sign(data, signature_algorithm_for(algorithm))
    return ev.UserauthRequest(
        username=username,
        method="publickey",
        public_key=key.public.blob,
        algorithm=algorithm,
        signature=signature,
    )


async def _answer(peer: HostilePeer, request: ev.UserauthRequest) -> ev.Event:
    await peer.send_event(request)
    return await peer.wait_for(
        lambda e: isinstance(e, ev.UserauthSuccess | ev.UserauthFailure | ev.UserauthPKOk)
    )


async def test_too_many_failures(hostile_server) -> None:
    stranger = PrivateKey.generate("ssh-ed25519")
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto("userauth")
        for _ in range(5):
            assert isinstance(await _answer(peer, _signed(peer, stranger)), ev.UserauthFailure)
        # The sixth failure is not answered: the connection ends (OpenSSH auth2.c).
        await peer.send_event(_signed(peer, stranger))
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE
        assert disconnect.description == "Too many authentication failures"
        assert len(peer.seen(ev.UserauthFailure)) == 5
        bed.nothing_ran()
        await bed.witness_works()


@pytest.mark.parametrize(
    ("second", "code", "words"),
    [
        (
            ev.UserauthRequest(username="root", method="none"),
            DisconnectReason.PROTOCOL_ERROR,
            "change of username or service is not allowed",
        ),
        (
            ev.UserauthRequest(username="mallory", method="none", service="ssh-other"),
            DisconnectReason.PROTOCOL_ERROR,
            "change of username or service is not allowed",
        ),
    ],
    ids=["username", "service"],
)
async def test_change_mid_auth(hostile_server, second, code, words) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto("userauth")
        first = ev.UserauthRequest(username="mallory", method="none")
        assert isinstance(await _answer(peer, first), ev.UserauthFailure)
        await peer.send_event(second)
        disconnect = await peer.expect_disconnect()
        assert (disconnect.code, disconnect.description) == (code, words)
        bed.nothing_ran()
        await bed.witness_works()


async def test_unknown_service_in_userauth(hostile_server) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto("userauth")
        await peer.send_event(ev.UserauthRequest(username="mallory", method="none", service="x"))
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == DisconnectReason.SERVICE_NOT_AVAILABLE
        assert "unknown service 'x'" in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()


@pytest.mark.parametrize("service", ["ssh-connection", "ssh-userauth\x00", "nonsense"])
async def test_service_request_other_than_userauth(hostile_server, service: str) -> None:
    # Asking for ssh-connection directly would skip authentication.
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto("service")
        await peer.inject(bytes(m.ServiceRequest(service)))
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == DisconnectReason.SERVICE_NOT_AVAILABLE
        assert disconnect.description == "service not available"
        bed.nothing_ran()
        await bed.witness_works()


async def test_decision_follows_the_key_that_signed(hostile_server, keys) -> None:
    stranger = PrivateKey.generate("ssh-ed25519")
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto("userauth")
        # Mallory's key is authorized: the query says so ...
        algorithm = keys.mallory.public.signature_algorithms()[0]
        query = ev.UserauthRequest(
            username="mallory",
            method="publickey",
            public_key=keys.mallory.public.blob,
            algorithm=algorithm,
        )
        assert isinstance(await _answer(peer, query), ev.UserauthPKOk)
        # ... but she signs with a key nobody authorized: refused.
        assert isinstance(await _answer(peer, _signed(peer, stranger)), ev.UserauthFailure)
        # Her key's blob with the stranger's signature: refused too.
        forged = _signed(peer, keys.mallory, signer=stranger)
        assert isinstance(await _answer(peer, forged), ev.UserauthFailure)
        # Her key, signed over another session's id (a replayed signature): refused.
        replayed = _signed(peer, keys.mallory, session_id=bytes(32))
        assert isinstance(await _answer(peer, replayed), ev.UserauthFailure)
        assert bed.handler.logins == ["witness"]
        # Her own signature works, and only now is she logged in.
        assert isinstance(await _answer(peer, _signed(peer, keys.mallory)), ev.UserauthSuccess)
        assert bed.handler.logins == ["witness", "mallory"]
        await bed.witness_works()
