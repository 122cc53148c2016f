"""The trio agent: client and server over real UNIX sockets and memory streams, forwarding.

Interop with OpenSSH's ssh-add, ssh-agent, ssh and sshd is in
tests/interop/test_agent_interop.py; these tests pin our own behaviour.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trioport.errors import AuthError, ChannelOpenError, ConfigError
from trioport.ssh import SSHConnection, SSHHandler, authenticate, open_ssh
from trioport.ssh.agent import (
    AGENT_CHANNEL,
    AgentClient,
    AgentForwardingHandler,
    AgentServer,
    AgentSigner,
    agent_signers,
    open_agent,
    relay_forwarded_agent,
)
from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto import agent as proto
from trioport.sshproto import events as ev
from trioport.sshproto.certs import DEFAULT_USER_EXTENSIONS, CertType, sign_certificate
from trioport.sshproto.keys import PrivateKey

KEY = PrivateKey.generate("ssh-ed25519")
OTHER = PrivateKey.generate("ecdsa-sha2-nistp256")
CA = PrivateKey.generate("ssh-ed25519")
HOST_KEY = PrivateKey.generate("ssh-ed25519")


def user_cert(key: PrivateKey = KEY):
    return sign_certificate(
        CA,
        key.public,
        cert_type=CertType.USER,
        key_id="alice",
        principals=["alice"],
        valid_after=0,
        valid_before=2**63,
        nonce=b"n" * 16,
        extensions=DEFAULT_USER_EXTENSIONS,
    )


@asynccontextmanager
async def running_agent(server: AgentServer, path=None) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        sock_path = await nursery.start(server.serve, path)
        yield sock_path
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def memory_agent(server: AgentServer, *, forwarded: bool = False):
    """A client talking to ``server`` over an in-memory stream (no OS, so MockClock is exact)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.expire_keys)
        nursery.start_soon(lambda: server.serve_stream(server_stream, forwarded=forwarded))
        async with AgentClient(client_stream) as client:
            yield client
        nursery.cancel_scope.cancel()


async def test_add_list_sign_remove_over_the_unix_socket() -> None:
    server = AgentServer()
    async with running_agent(server) as path, open_agent(path) as agent:
        assert await agent.list_identities() == []
        await agent.add_identity(KEY, comment="alice@laptop")
        await agent.add_identity(OTHER, comment="other")
        listed = await agent.list_identities()
        assert [(i.key_blob, i.comment) for i in listed] == [
            (KEY.public.blob, "alice@laptop"),
            (OTHER.public.blob, "other"),
        ]
        signature = await agent.sign(KEY.public.blob, b"data")
        assert KEY.public.verify(signature, b"data")
        await agent.remove_identity(KEY.public)
        assert [i.comment for i in await agent.list_identities()] == ["other"]
        with pytest.raises(AuthError, match="refused to sign"):
            await agent.sign(KEY.public.blob, b"data")
        with pytest.raises(AuthError, match="remove the key"):
            await agent.remove_identity(KEY.public)
        await agent.remove_all_identities()
        assert await agent.list_identities() == []


async def test_the_socket_is_private_and_removed_afterwards() -> None:
    server = AgentServer()
    async with running_agent(server) as path:
        directory = trio.Path(path).parent
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert server.path == path
    assert not await trio.Path(path).exists()
    assert not await directory.exists()
    assert server.path is None


async def test_a_chosen_path_must_be_in_a_private_directory(tmp_path) -> None:
    public = tmp_path / "public"
    public.mkdir(mode=0o755)
    public.chmod(0o755)
    with pytest.raises(ConfigError, match="0700"):
        await AgentServer().serve(public / "agent.sock")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    async with running_agent(AgentServer(), private / "agent.sock") as path:
        assert path == str(private / "agent.sock")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not (private / "agent.sock").exists()


async def test_a_peer_with_another_uid_is_refused() -> None:
    # SO_PEERCRED reports our own uid, which this agent does not allow.
    server = AgentServer(allowed_uids={os.geteuid() + 4242})
    server.add_key(KEY)
    async with running_agent(server) as path, open_agent(path) as agent:
        with pytest.raises(trio.BrokenResourceError):
            await agent.list_identities()


async def test_open_agent_needs_ssh_auth_sock(monkeypatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(ConfigError, match="SSH_AUTH_SOCK"):
        async with open_agent():
            pass


async def test_lifetimes_run_on_trio_time(autojump_clock) -> None:
    server = AgentServer()
    async with memory_agent(server) as agent:
        await agent.add_identity(KEY, lifetime=60)
        await agent.add_identity(OTHER)
        await trio.sleep(59)
        assert len(await agent.list_identities()) == 2
        await trio.sleep(2)
        # Forgotten when the lifetime ended, not only at the next request.
        assert [k.key.public for k in server.keyring.keys] == [OTHER.public]
        assert [i.key_blob for i in await agent.list_identities()] == [OTHER.public.blob]


async def test_the_default_lifetime_applies_to_keys_added_without_one(autojump_clock) -> None:
    server = AgentServer(proto.Keyring(default_lifetime=10))
    async with memory_agent(server) as agent:
        await agent.add_identity(KEY)
        server.add_key(OTHER)
        await trio.sleep(11)
        assert await agent.list_identities() == []


async def test_lock_and_unlock() -> None:
    server = AgentServer()
    server.add_key(KEY)
    async with memory_agent(server) as agent:
        await agent.lock("secret")
        assert await agent.list_identities() == []
        with pytest.raises(AuthError):
            await agent.sign(KEY.public.blob, b"x")
        with pytest.raises(AuthError):
            await agent.add_identity(OTHER)
        with pytest.raises(AuthError, match="unlock"):
            await agent.unlock("wrong")
        await agent.unlock("secret")
        assert len(await agent.list_identities()) == 1


async def test_confirm_keys_sign_only_when_the_hook_says_yes() -> None:
    asked = []
    answer = True

    async def confirm(entry: proto.AgentKey, request: proto.SignRequest) -> bool:
        asked.append((entry.comment, request.data))
        return answer

    without_hook = AgentServer()
    async with memory_agent(without_hook) as agent:
        await agent.add_identity(KEY, comment="k", confirm=True)
        with pytest.raises(AuthError, match="refused to sign"):
            await agent.sign(KEY.public.blob, b"x")

    with_hook = AgentServer(confirm=confirm)
    async with memory_agent(with_hook) as agent:
        await agent.add_identity(KEY, comment="k", confirm=True)
        assert KEY.public.verify(await agent.sign(KEY.public.blob, b"yes"), b"yes")
        answer = False
        with pytest.raises(AuthError):
            await agent.sign(KEY.public.blob, b"no")
    assert asked == [("k", b"yes"), ("k", b"no")]


async def test_a_certificate_is_listed_and_signs_as_its_key() -> None:
    cert = user_cert()
    server = AgentServer()
    async with memory_agent(server) as agent:
        await agent.add_identity(KEY, certificate=cert, comment="cert", lifetime=300)
        (signer,) = await agent_signers(agent)
        assert signer.public_blob == cert.blob
        assert signer.algorithm == "ssh-ed25519-cert-v01@openssh.com"
        assert KEY.public.verify(await signer.sign(b"data"), b"data")
        entry = server.keyring.keys[0]
        assert entry.certificate == cert
        assert entry.expires_at is not None


async def test_rsa_agent_signers_ask_for_sha2() -> None:
    rsa = PrivateKey.generate("ssh-rsa", bits=2048)
    server = AgentServer()
    server.add_key(rsa)
    async with memory_agent(server) as agent:
        (signer,) = await agent_signers(agent)
        assert signer.algorithm == "rsa-sha2-512"
        assert signer.flags == proto.SIGN_RSA_SHA2_512
        signature = await signer.sign(b"data")
        assert rsa.public.verify(signature, b"data", allowed=["rsa-sha2-512"])
        sha256 = AgentSigner(agent, rsa.public.blob, algorithm="rsa-sha2-256")
        assert rsa.public.verify(await sha256.sign(b"d"), b"d", allowed=["rsa-sha2-256"])


async def test_a_framing_error_ends_the_connection() -> None:
    server = AgentServer()
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_stream)
        await client_stream.send_all(b"\xff\xff\xff\xff")  # a 4 GiB frame
        assert await client_stream.receive_some() == b""


async def test_an_answer_over_256_kib_ends_that_connection_not_the_agent() -> None:
    server = AgentServer()
    for _ in range(300):  # 300 keys with 1000-byte comments: the listing is too big
        server.add_key(PrivateKey.generate("ssh-ed25519"), comment="c" * 1000)
    async with running_agent(server) as path:
        async with open_agent(path) as agent:
            with pytest.raises(trio.BrokenResourceError):
                await agent.list_identities()
        async with open_agent(path) as agent:
            await agent.remove_all_identities()
            assert await agent.list_identities() == []


async def test_an_undecodable_request_gets_failure_and_the_connection_lives_on() -> None:
    server = AgentServer()
    server.add_key(KEY)
    async with memory_agent(server) as agent:
        assert isinstance(await agent.request(proto.UnknownRequest(200, b"zz")), proto.Failure)
        assert len(await agent.list_identities()) == 1


# --- forwarding ---------------------------------------------------------------------------


@asynccontextmanager
async def relayed(upstream: AgentServer):
    """A client whose requests pass through relay_forwarded_agent to ``upstream``."""
    down_client, down_relay = trio.testing.memory_stream_pair()
    up_relay, up_agent = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upstream.serve_stream, up_agent)
        nursery.start_soon(relay_forwarded_agent, down_relay, up_relay)
        async with AgentClient(down_client) as client:
            yield client
        nursery.cancel_scope.cancel()


async def test_the_relay_passes_list_and_sign_and_nothing_else() -> None:
    # The upstream agent would accept all of these; only the relay stops them.
    upstream = AgentServer()
    upstream.add_key(KEY)
    async with relayed(upstream) as agent:
        (identity,) = await agent.list_identities()
        assert KEY.public.verify(await agent.sign(identity.key_blob, b"d"), b"d")
        with pytest.raises(AuthError):
            await agent.add_identity(OTHER)
        with pytest.raises(AuthError):
            await agent.remove_identity(KEY.public)
        with pytest.raises(AuthError):
            await agent.remove_all_identities()
        with pytest.raises(AuthError):
            await agent.lock("x")
        smartcard = proto.AddSmartcardKey("/usr/lib/x/opensc-pkcs11.so", "1234")
        assert isinstance(await agent.request(smartcard), proto.Failure)
        remove_card = proto.RemoveSmartcardKey("/usr/lib/x/opensc-pkcs11.so", "")
        assert isinstance(await agent.request(remove_card), proto.Failure)
        assert isinstance(await agent.request(proto.Extension("query")), proto.Failure)
    assert [k.key.public for k in upstream.keyring.keys] == [KEY.public]
    assert not upstream.keyring.locked


async def test_a_forwarded_in_process_agent_only_lists_and_signs() -> None:
    server = AgentServer()
    server.add_key(KEY)
    async with memory_agent(server, forwarded=True) as agent:
        assert len(await agent.list_identities()) == 1
        await agent.sign(KEY.public.blob, b"d")
        with pytest.raises(AuthError):
            await agent.remove_all_identities()
        with pytest.raises(AuthError):
            await agent.add_identity(OTHER)
    assert len(server.keyring.keys) == 1


class Sessions(SSHHandler):
    """Server: accepts KEY and holds sessions open; records the connection."""

    def __init__(self) -> None:
        self.requests: list[ev.ChannelRequest] = []

    async def auth(self, conn: SSHConnection, request: ev.UserauthRequest) -> bool:
        return request.public_key == KEY.public.blob

    async def channel_open(self, conn: SSHConnection, request: ev.ChannelOpen):
        async def serve(chan) -> None:
            while (req := await chan.next_request()) is not None:
                self.requests.append(req)
                await chan.reply(req, True)

        return serve


@asynccontextmanager
async def ssh_pair(client_handler: SSHHandler):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server_cfg = ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(HOST_KEY)])
    async with (
        open_ssh(server_stream, server_cfg, Sessions()) as server,
        open_ssh(client_stream, ConnectionConfig(role=Role.CLIENT), client_handler) as client,
    ):
        await authenticate(client, "alice", signers=[KEY])
        yield client, server


async def test_agent_channels_are_refused_until_forwarding_was_requested() -> None:
    agent = AgentServer()
    agent.add_key(KEY, comment="mine")
    handler = AgentForwardingHandler(agent)
    async with ssh_pair(handler) as (client, server):
        with pytest.raises(ChannelOpenError, match="not requested"):
            await server.open_channel(AGENT_CHANNEL)
        session = await client.open_session()
        assert await handler.request(session)
        chan = await server.open_channel(AGENT_CHANNEL)
        async with AgentClient(chan) as far_side:
            (identity,) = await far_side.list_identities()
            assert identity.comment == "mine"
            assert KEY.public.verify(await far_side.sign(KEY.public.blob, b"d"), b"d")
            with pytest.raises(AuthError):
                await far_side.remove_all_identities()
    assert len(agent.keyring.keys) == 1


async def test_forwarding_a_socket_agent_relays_through_the_filter() -> None:
    agent = AgentServer()
    agent.add_key(KEY, comment="on-disk agent")
    async with running_agent(agent) as path:
        handler = AgentForwardingHandler(path)
        async with ssh_pair(handler) as (client, server):
            session = await client.open_session()
            assert await handler.request(session)
            async with AgentClient(await server.open_channel(AGENT_CHANNEL)) as far_side:
                assert [i.comment for i in await far_side.list_identities()] == ["on-disk agent"]
                with pytest.raises(AuthError):
                    await far_side.lock("x")
                with pytest.raises(AuthError):
                    await far_side.remove_identity(KEY.public)
    assert not agent.keyring.locked
    assert len(agent.keyring.keys) == 1


async def test_an_unreachable_agent_socket_refuses_the_channel(tmp_path) -> None:
    handler = AgentForwardingHandler(tmp_path / "no-such-agent.sock")
    async with ssh_pair(handler) as (client, server):
        assert await handler.request(await client.open_session())
        with pytest.raises(ChannelOpenError, match="cannot reach the agent"):
            await server.open_channel(AGENT_CHANNEL)
