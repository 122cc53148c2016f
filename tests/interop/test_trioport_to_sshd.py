"""trioport's client against Debian's sshd (OpenSSH 9.2), on loopback."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

from trioport.errors import AuthenticationFailed, HostKeyNotVerifiable
from trioport.ssh import connect
from trioport.sshproto import ConnectionConfig, Role
from trioport.sshproto import events as ev
from trioport.sshproto.keys import PrivateKey

from .test_ssh_to_trioport import CIPHER_MAC_PAIRS, KEXES

pytestmark = pytest.mark.interop

HOST_KEY_ALGORITHMS = ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256", "ecdsa-sha2-nistp256"]


def client_config(**overrides) -> ConnectionConfig:
    return ConnectionConfig(role=Role.CLIENT, **overrides)


async def test_exec_with_exit_status_and_separate_stderr(sshd, user_key) -> None:
    server = sshd()
    with trio.fail_after(30):
        async with connect(
            "127.0.0.1",
            server.port,
            username="root",
            signers=[user_key.key],
            config=client_config(),
        ) as conn:
            result = await conn.run("echo out; echo err >&2; exit 5")
    assert (result.exit_status, result.stdout, result.stderr) == (5, b"out\n", b"err\n")


async def test_strict_kex_and_default_algorithms(sshd, user_key) -> None:
    server = sshd({"LogLevel": "DEBUG3"})
    with trio.fail_after(30):
        async with connect(
            "127.0.0.1",
            server.port,
            username="root",
            signers=[user_key.key],
            config=client_config(),
        ) as conn:
            await conn.run("true")
            negotiated = conn.negotiated
    assert negotiated["kex"] == "curve25519-sha256"
    assert negotiated["cipher_c2s"] == "aes128-gcm@openssh.com"
    assert "will use strict KEX ordering" in server.log_text()


@pytest.mark.parametrize("kex", KEXES)
async def test_every_shared_kex(sshd, user_key, kex) -> None:
    server = sshd()
    with trio.fail_after(30):
        async with connect(
            "127.0.0.1",
            server.port,
            username="root",
            signers=[user_key.key],
            config=client_config(kex_algorithms=[kex]),
        ) as conn:
            assert (await conn.run("echo ok")).stdout == b"ok\n"
            assert conn.negotiated["kex"] == kex


@pytest.mark.parametrize(("cipher", "mac"), CIPHER_MAC_PAIRS)
async def test_every_shared_cipher_and_mac(sshd, user_key, cipher, mac) -> None:
    server = sshd()
    with trio.fail_after(30):
        async with connect(
            "127.0.0.1",
            server.port,
            username="root",
            signers=[user_key.key],
            config=client_config(ciphers=[cipher], macs=[mac]),
        ) as conn:
            assert (await conn.run("echo ok")).stdout == b"ok\n"
            assert conn.negotiated["cipher_c2s"] == cipher


@pytest.mark.parametrize("algorithm", HOST_KEY_ALGORITHMS)
async def test_every_host_key_algorithm_is_verified(sshd, user_key, algorithm) -> None:
    server = sshd()
    seen: list[bytes] = []

    def verify(blob: bytes, alg: str) -> bool:
        seen.append(blob)
        return True

    with trio.fail_after(30):
        async with connect(
            "127.0.0.1",
            server.port,
            username="root",
            signers=[user_key.key],
            config=client_config(host_key_algorithms=[algorithm], verify_host_key=verify),
        ) as conn:
            await conn.run("true")
    key_type = "ssh-rsa" if algorithm.startswith("rsa-") else algorithm
    assert seen == [server.host_keys[key_type].public.blob]


async def test_untrusted_host_key_is_refused(sshd, user_key) -> None:
    server = sshd()
    with trio.fail_after(30), pytest.raises(HostKeyNotVerifiable):
        async with connect(
            "127.0.0.1",
            server.port,
            username="root",
            signers=[user_key.key],
            config=client_config(verify_host_key=lambda blob, alg: False),
        ):
            pass


async def test_wrong_key_is_refused(sshd) -> None:
    server = sshd()
    with trio.fail_after(30), pytest.raises(AuthenticationFailed):
        async with connect(
            "127.0.0.1",
            server.port,
            username="root",
            signers=[PrivateKey.generate("ssh-ed25519")],
            config=client_config(),
        ):
            pass


BULK = 64 * 1024 * 1024


@pytest.mark.parametrize("rekeys", ["none", "sshd-every-MiB", "trioport-every-MiB"])
async def test_64_mib_each_way_with_and_without_rekeys(sshd, user_key, rekeys) -> None:
    """64 MiB up and 64 MiB down through one channel, sha256 checked on the far side."""
    server = sshd({"RekeyLimit": "1M"} if rekeys == "sshd-every-MiB" else {})
    overrides = {"rekey_bytes": 1024 * 1024} if rekeys == "trioport-every-MiB" else {}
    data = os.urandom(BULK)
    with trio.fail_after(180):
        async with connect(
            "127.0.0.1",
            server.port,
            username="root",
            signers=[user_key.key],
            config=client_config(**overrides),
        ) as conn:
            result = await conn.run(f"sha256sum; head -c {BULK} /dev/zero", input=data)
            rekeys_seen = conn.rekeys
    head, _, tail = result.stdout.partition(b"  -\n")
    assert head.decode() == hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(tail).digest() == hashlib.sha256(bytes(BULK)).digest()
    if rekeys == "none":
        assert rekeys_seen == 0
    else:
        # 128 MiB moved with a 1 MiB limit on one side: dozens of re-exchanges.
        assert rekeys_seen >= 32


async def test_env_and_subsystem(sshd, user_key) -> None:
    server = sshd()
    with trio.fail_after(30):
        async with connect(
            "127.0.0.1",
            server.port,
            username="root",
            signers=[user_key.key],
            config=client_config(),
        ) as conn:
            result = await conn.run("echo $TRIOPORT_TEST", env={"TRIOPORT_TEST": "yes"})
            assert result.stdout == b"yes\n"
            chan = await conn.open_session()
            async with chan:
                assert await chan.request(ev.Subsystem(name="sftp"))
                # SSH_FXP_INIT version 3; sftp-server answers SSH_FXP_VERSION (2).
                await chan.send_all(b"\x00\x00\x00\x05\x01\x00\x00\x00\x03")
                reply = await chan.receive_some()
                assert reply[4] == 2


async def test_direct_tcpip_through_sshd(sshd, user_key, nursery) -> None:
    server = sshd()
    target = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = target.socket.getsockname()[1]

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data.upper())

    nursery.start_soon(trio.serve_listeners, echo, [target])
    with trio.fail_after(30):
        async with connect(
            "127.0.0.1",
            server.port,
            username="root",
            signers=[user_key.key],
            config=client_config(),
        ) as conn:
            chan = await conn.open_channel(
                "direct-tcpip",
                host="127.0.0.1",
                port=port,
                originator_address="127.0.0.1",
                originator_port=1,
            )
            async with chan:
                await chan.send_all(b"shout")
                assert await chan.receive_some() == b"SHOUT"
