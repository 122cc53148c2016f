"""Messages only a server may send, sent by a client, at every point of the protocol.

paramiko CVE-2018-1000805 shared its client and server handler tables, so a client
could send a *client-side* message (USERAUTH_SUCCESS, SERVICE_ACCEPT ...) and flip
the server's state; libssh CVE-2018-10933 accepted USERAUTH_SUCCESS from a client
as a login. Here every server-to-client message type is replayed by a client at
every position of :data:`~tests.hostile.peer.POSITIONS`, from before KEXINIT to
after login: each must end that connection with PROTOCOL_ERROR and nothing else.
"""

from __future__ import annotations

import pytest
import trio

from trioport.errors import DisconnectReason
from trioport.sshproto import messages as m

from .conftest import TIMEOUT
from .peer import POSITIONS

#: Every message number only a server sends (RFC 4250 §4.1, RFC 8308 §2.3).
SERVER_TO_CLIENT = {
    "SERVICE_ACCEPT": lambda keys: m.ServiceAccept("ssh-userauth"),
    "EXT_INFO": lambda keys: m.ExtInfo((("server-sig-algs", b"ssh-ed25519"),)),
    "KEX_ECDH_REPLY": lambda keys: m.KexEcdhReply(keys.host.public.blob, bytes(32), b"sig"),
    "USERAUTH_FAILURE": lambda keys: m.UserauthFailure(("publickey",)),
    "USERAUTH_SUCCESS": lambda keys: m.UserauthSuccess(),
    "USERAUTH_BANNER": lambda keys: m.UserauthBanner("welcome, mallory"),
    "USERAUTH_PK_OK": lambda keys: m.UserauthPkOk("ssh-ed25519", keys.mallory.public.blob),
}

#: The state name the server reports in its DISCONNECT, by position.
STATE = {
    "before-kexinit": "kex",
    "kex": "kex",
    "kex-not-strict": "kex",
    "kex-window": "kex",
    "service": "service",
    "userauth": "userauth",
    "connected": "connected",
}


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("name", list(SERVER_TO_CLIENT))
async def test_server_message_from_a_client(hostile_server, keys, position: str, name: str):
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto(position, keys.mallory)
        payload = bytes(SERVER_TO_CLIENT[name](keys))
        await peer.send_message(payload)
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == DisconnectReason.PROTOCOL_ERROR
        number = payload[0]
        label = m.MsgId(number).name
        assert (
            f"unexpected message {number} ({label}) in state {STATE[position]}"
            in disconnect.description
        )
        logged_in = position == "connected"
        bed.nothing_ran(logged_in=logged_in)
        if logged_in:
            (server_side,) = bed.handler.connections["mallory"]
            assert server_side.closed
        await bed.witness_works()


@pytest.mark.parametrize("position", ["kex", "service", "userauth"])
async def test_unknown_message_before_login(hostile_server, position: str) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto(position)
        await peer.send_message(b"\xc8payload")
        disconnect = await peer.expect_disconnect()
        assert disconnect.code == DisconnectReason.PROTOCOL_ERROR
        assert "unexpected message 200 (unknown)" in disconnect.description
        bed.nothing_ran()
        await bed.witness_works()


async def test_unknown_message_after_login_is_unimplemented(hostile_server, keys) -> None:
    # RFC 4253 §11.4: answered with UNIMPLEMENTED; the connection goes on.
    with trio.fail_after(TIMEOUT):
        bed = await hostile_server()
        peer = await bed.peer()
        await peer.goto("connected", keys.mallory)
        await peer.inject(b"\xc8payload")
        assert await peer.exec(b"echo still here") == b"still here\n"
        await bed.witness_works()
