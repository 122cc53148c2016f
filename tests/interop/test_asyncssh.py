"""mlkem768x25519-sha256 against asyncssh, since Debian's OpenSSH 9.2 predates it.

asyncssh runs in its own process (it is asyncio; we are trio), in both roles.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import trio

from trioport.ssh import connect
from trioport.sshproto import ConnectionConfig, Role

from .conftest import free_port

pytestmark = pytest.mark.interop

ASYNCSSH_SERVER = textwrap.dedent("""
    import asyncio, sys
    import asyncssh

    async def handle(process):
        process.stdout.write("asyncssh says " + (process.command or "") + "\\n")
        process.exit(0)

    async def main(port, host_key, authorized):
        await asyncssh.listen("127.0.0.1", port, server_host_keys=[host_key],
                              authorized_client_keys=authorized, process_factory=handle,
                              kex_algs=["mlkem768x25519-sha256"])
        print("ready", flush=True)
        await asyncio.sleep(120)

    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
""")

ASYNCSSH_CLIENT = textwrap.dedent("""
    import asyncio, sys
    import asyncssh

    async def main(port, key):
        async with asyncssh.connect("127.0.0.1", port, username="root", client_keys=[key],
                                    known_hosts=None, kex_algs=["mlkem768x25519-sha256"]) as conn:
            result = await conn.run("echo pq", check=True)
            print(result.stdout, end="", flush=True)

    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
""")


async def test_our_client_against_asyncssh_server(tmp_path, user_key) -> None:
    from trioport.sshproto.keys import PrivateKey

    from .conftest import write_private_key

    host_key = write_private_key(PrivateKey.generate("ssh-ed25519"), tmp_path / "host")
    (tmp_path / "server.py").write_text(ASYNCSSH_SERVER)
    port = free_port()
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            str(tmp_path / "server.py"),
            str(port),
            str(host_key),
            str(user_key.path) + ".pub",
        ],
        stdout=-1,
    )
    try:
        with trio.fail_after(30):
            assert (await proc.stdout.receive_some()).startswith(b"ready")
            config = ConnectionConfig(role=Role.CLIENT, kex_algorithms=["mlkem768x25519-sha256"])
            async with connect(
                "127.0.0.1", port, username="root", signers=[user_key.key], config=config
            ) as conn:
                result = await conn.run("hello")
                assert conn.negotiated["kex"] == "mlkem768x25519-sha256"
        assert result.stdout == b"asyncssh says hello\n"
    finally:
        proc.kill()
        await proc.wait()


async def test_asyncssh_client_against_our_server(tmp_path, trioport_server, user_key) -> None:
    server = await trioport_server()  # mlkem768x25519-sha256 is our default first choice
    (tmp_path / "client.py").write_text(ASYNCSSH_CLIENT)
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, str(tmp_path / "client.py"), str(server.port), str(user_key.path)],
            capture_stdout=True,
            capture_stderr=True,
        )
    # The client offered only mlkem768x25519-sha256, so success means it was used.
    assert result.stdout == b"pq\n"
