"""OpenSSH's ``ssh`` (Debian's 9.2) against trioport's server, on loopback."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

from trioport.sshproto import ConnectionConfig, HostKey, Role
from trioport.sshproto.keys import PrivateKey

from .conftest import ssh_command

pytestmark = pytest.mark.interop

# Algorithms OpenSSH 9.2 and trioport both implement.
KEXES = [
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
]
CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]
MACS = [
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
]


async def run(cmd: list[str], stdin: bytes = b"", check: bool = True) -> trio.CompletedProcess:
    with trio.fail_after(60):
        return await trio.run_process(
            cmd, stdin=stdin, capture_stdout=True, capture_stderr=True, check=check
        )


def everything_enabled(host_key: PrivateKey) -> ConnectionConfig:
    """A server config with every algorithm trioport implements switched on."""
    from trioport.sshproto import ciphers, kex, keys

    return ConnectionConfig(
        role=Role.SERVER,
        host_keys=[HostKey(host_key)],
        kex_algorithms=list(kex.KEX_METHODS),
        ciphers=list(ciphers.CIPHERS),
        macs=list(ciphers.MACS),
        host_key_algorithms=list(keys.HOST_KEY_ALGORITHMS),
    )


async def test_exec_reports_output_stderr_and_exit_status(trioport_server, user_key) -> None:
    server = await trioport_server()
    result = await run(
        ssh_command(server.port, user_key.path, "echo out; echo err >&2; exit 7"), check=False
    )
    assert result.returncode == 7
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"


async def test_strict_kex_is_negotiated(trioport_server, user_key) -> None:
    server = await trioport_server()
    result = await run(
        ssh_command(server.port, user_key.path, "true", options={"LogLevel": "DEBUG3"})
    )
    # OpenSSH logs this only when both sides advertised kex-strict.
    assert b"will use strict KEX ordering" in result.stderr


@pytest.mark.parametrize("kex", KEXES)
async def test_every_shared_kex(trioport_server, user_key, server_host_key, kex) -> None:
    cfg = everything_enabled(server_host_key)
    server = await trioport_server(config=cfg)
    result = await run(
        ssh_command(
            server.port,
            user_key.path,
            "echo ok",
            options={"KexAlgorithms": kex, "LogLevel": "DEBUG1"},
        )
    )
    assert result.stdout == b"ok\n"
    assert f"kex: algorithm: {kex}".encode() in result.stderr


# AEAD ciphers carry their own tag, so each is tried once; CTR with every MAC.
CIPHER_MAC_PAIRS = [(c, MACS[0]) for c in CIPHERS if "gcm" in c or "chacha" in c] + [
    (c, m) for c in CIPHERS if c.endswith("-ctr") for m in MACS
]


@pytest.mark.parametrize(("cipher", "mac"), CIPHER_MAC_PAIRS)
async def test_every_shared_cipher_and_mac(
    trioport_server, user_key, server_host_key, cipher, mac
) -> None:
    cfg = everything_enabled(server_host_key)
    server = await trioport_server(config=cfg)
    result = await run(
        ssh_command(
            server.port,
            user_key.path,
            "echo ok",
            options={"Ciphers": cipher, "MACs": mac, "LogLevel": "DEBUG1"},
        )
    )
    assert result.stdout == b"ok\n"
    assert f"cipher: {cipher}".encode() in result.stderr


@pytest.mark.parametrize("key_type", ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"])
async def test_every_host_key_type(trioport_server, user_key, key_type) -> None:
    key = (
        PrivateKey.generate(key_type, bits=3072)
        if key_type == "ssh-rsa"
        else PrivateKey.generate(key_type)
    )
    cfg = everything_enabled(key)
    server = await trioport_server(config=cfg)
    result = await run(
        ssh_command(server.port, user_key.path, "echo ok", options={"LogLevel": "DEBUG1"})
    )
    assert result.stdout == b"ok\n"
    assert key.public.fingerprint().encode() in result.stderr


BULK = 64 * 1024 * 1024


@pytest.mark.parametrize("rekeys", ["none", "openssh-every-MiB", "trioport-every-MiB"])
async def test_64_mib_each_way_with_and_without_rekeys(
    trioport_server, user_key, server_host_key, rekeys
) -> None:
    """64 MiB up and 64 MiB down through one channel, sha256 checked on the far side."""
    config = None
    options = {"LogLevel": "DEBUG1"}
    if rekeys == "openssh-every-MiB":
        options["RekeyLimit"] = "1M"
    if rekeys == "trioport-every-MiB":
        config = ConnectionConfig(
            role=Role.SERVER, host_keys=[HostKey(server_host_key)], rekey_bytes=1024 * 1024
        )
    server = await trioport_server(config=config)
    data = os.urandom(BULK)
    with trio.fail_after(180):
        result = await trio.run_process(
            ssh_command(
                server.port,
                user_key.path,
                f"sha256sum; head -c {BULK} /dev/zero",
                options=options,
            ),
            stdin=data,
            capture_stdout=True,
            capture_stderr=True,
        )
    head, _, tail = result.stdout.partition(b"  -\n")
    assert head.decode() == hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(tail).digest() == hashlib.sha256(bytes(BULK)).digest()
    exchanges = result.stderr.count(b"SSH2_MSG_NEWKEYS received")
    if rekeys == "none":
        assert exchanges == 1
    else:
        assert exchanges >= 32  # 128 MiB with a 1 MiB limit on one side


async def test_env_is_passed_when_accepted(trioport_server, user_key) -> None:
    server = await trioport_server()
    env = dict(os.environ, LANG="C.UTF-8")
    with trio.fail_after(30):
        result = await trio.run_process(
            ssh_command(server.port, user_key.path, "echo $LANG", options={"SendEnv": "LANG"}),
            capture_stdout=True,
            env=env,
        )
    assert result.stdout == b"C.UTF-8\n"


async def test_tty_shell_follows_window_changes(trioport_server, user_key) -> None:
    """``ssh -tt`` on a 30x100 terminal, then resized to 40x120 while running."""
    import fcntl
    import signal
    import struct
    import termios

    server = await trioport_server()
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = await trio.lowlevel.open_process(
        ssh_command(server.port, user_key.path, "-tt", "stty size; read line; stty size; exit 3"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    screen = trio.lowlevel.FdStream(master)
    output = bytearray()

    async def read_until(marker: bytes) -> None:
        while marker not in output:
            output.extend(await screen.receive_some())

    try:
        with trio.fail_after(30):
            await read_until(b"30 100")
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            proc.send_signal(signal.SIGWINCH)
            await trio.sleep(0.5)  # let ssh send window-change before the newline
            await screen.send_all(b"\n")
            await read_until(b"40 120")
            assert await proc.wait() == 3
    finally:
        if proc.returncode is None:
            proc.kill()
        await screen.aclose()


async def test_local_forward_through_our_server(trioport_server, user_key, nursery) -> None:
    server = await trioport_server()
    target = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    target_port = target.socket.getsockname()[1]

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data.upper())

    nursery.start_soon(trio.serve_listeners, echo, [target])
    from .conftest import free_port

    local = free_port()
    proc = await trio.lowlevel.open_process(
        ssh_command(
            server.port,
            user_key.path,
            "-N",
            "-L",
            f"127.0.0.1:{local}:127.0.0.1:{target_port}",
            options={"ExitOnForwardFailure": "yes"},
        )
    )
    try:
        with trio.fail_after(20):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", local)
                    break
                except OSError:
                    await trio.sleep(0.05)
            async with stream:
                await stream.send_all(b"hello")
                assert await stream.receive_some() == b"HELLO"
    finally:
        proc.terminate()
        await proc.wait()


async def test_remote_forward_through_our_server(trioport_server, user_key, nursery) -> None:
    server = await trioport_server()
    target = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    target_port = target.socket.getsockname()[1]

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data[::-1])

    nursery.start_soon(trio.serve_listeners, echo, [target])
    from .conftest import free_port

    remote = free_port()
    proc = await trio.lowlevel.open_process(
        ssh_command(
            server.port,
            user_key.path,
            "-N",
            "-R",
            f"127.0.0.1:{remote}:127.0.0.1:{target_port}",
            options={"ExitOnForwardFailure": "yes"},
        )
    )
    try:
        with trio.fail_after(20):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", remote)
                    break
                except OSError:
                    await trio.sleep(0.05)
            async with stream:
                await stream.send_all(b"abc")
                assert await stream.receive_some() == b"cba"
    finally:
        proc.terminate()
        await proc.wait()


async def test_ssh_keyscan_lists_our_host_key(trioport_server, server_host_key) -> None:
    server = await trioport_server()
    result = await run(["ssh-keyscan", "-p", str(server.port), "-t", "ed25519", "127.0.0.1"])
    assert server_host_key.public.openssh_line().split()[1].encode() in result.stdout


async def test_wrong_key_is_refused(trioport_server, tmp_path) -> None:
    from .conftest import write_private_key

    server = await trioport_server()
    other = write_private_key(PrivateKey.generate("ssh-ed25519"), tmp_path / "other")
    result = await run(ssh_command(server.port, other, "true"), check=False)
    assert result.returncode == 255
    assert b"Permission denied (publickey)" in result.stderr
