"""The examples in docs/ssh-library.md run exactly as written.

The "serve a shell" example runs as a server process; the "run a command" example
(and OpenSSH's ssh) log in to it with a key and a known_hosts file.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import sys

import pytest
import trio

from trioport.sshproto.keyfiles import dump_private_key, load_private_key
from trioport.sshproto.keys import PrivateKey

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "ssh-library.md"


def examples() -> dict[str, str]:
    found = {}
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S):
        first = block.splitlines()[0]
        if first.startswith("# example: "):
            found[first.removeprefix("# example: ").strip()] = block
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def example_server(tmp_path: pathlib.Path, nursery: trio.Nursery):
    code = examples()
    (tmp_path / "serve_shell.py").write_text(code["serve_shell.py"])
    (tmp_path / "run_command.py").write_text(code["run_command.py"])
    server_dir = tmp_path / "server-state"
    client_dir = tmp_path / "client"
    server_dir.mkdir()
    client_dir.mkdir()
    user_key = PrivateKey.generate("ssh-ed25519")
    (client_dir / "id_ed25519").write_bytes(dump_private_key(user_key))
    (client_dir / "id_ed25519").chmod(0o600)
    (server_dir / "authorized_keys").write_text(user_key.public.openssh_line("me") + "\n")
    port = free_port()
    env = dict(os.environ, SSH_PORT=str(port), SERVER_DIR=str(server_dir))
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(tmp_path / "serve_shell.py")], env=env
    )
    try:
        with trio.fail_after(30):
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.05)
        host_key = load_private_key((server_dir / "host_ed25519").read_bytes())
        (client_dir / "known_hosts").write_text(
            f"[127.0.0.1]:{port} {host_key.public.openssh_line()}\n"
        )
        yield tmp_path, port, client_dir
    finally:
        proc.kill()
        await proc.wait()


async def run_example(tmp_path, port, client_dir, *args: str) -> trio.CompletedProcess:
    env = dict(os.environ, SSH_PORT=str(port), SSH_DIR=str(client_dir), SSH_USER="root")
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, str(tmp_path / "run_command.py"), *args],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_run_command_example_against_serve_shell_example(example_server) -> None:
    tmp_path, port, client_dir = example_server
    result = await run_example(tmp_path, port, client_dir, "echo hello; echo oops >&2; exit 4")
    assert (result.returncode, result.stdout, result.stderr) == (4, b"hello\n", b"oops\n")


async def test_run_command_example_refuses_an_unknown_host_key(example_server) -> None:
    tmp_path, port, client_dir = example_server
    (client_dir / "known_hosts").write_text(
        f"[127.0.0.1]:{port} {PrivateKey.generate('ssh-ed25519').public.openssh_line()}\n"
    )
    result = await run_example(tmp_path, port, client_dir, "echo never")
    assert result.returncode != 0
    assert b"HostKeyNotVerifiable" in result.stderr
    assert b"never" not in result.stdout


async def test_openssh_logs_in_to_serve_shell_example(example_server) -> None:
    _tmp_path, port, client_dir = example_server
    with trio.fail_after(30):
        result = await trio.run_process(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-p",
                str(port),
                "-i",
                str(client_dir / "id_ed25519"),
                "-o",
                f"UserKnownHostsFile={client_dir / 'known_hosts'}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "root@127.0.0.1",
                "echo via openssh",
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.stdout == b"via openssh\n", result.stderr
