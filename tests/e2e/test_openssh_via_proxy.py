"""OpenSSH's own tools through the proxy of a real cluster, with the files tsh wrote.

One ``trioport run`` serves the module; dave is invited and logs in with ``tsh``
(:mod:`.test_full_path`), and ``tsh config`` writes the OpenSSH configuration
(``ProxyCommand ssh -p PROXY %r@proxy -s proxy:%h:%p`` with tsh's key,
certificate and known_hosts). Then, with nothing but OpenSSH 9.2's programs:

- ``scp`` in its default SFTP mode and ``scp -O`` (the legacy protocol, which
  runs the node's ``/usr/bin/scp``), both ways;
- ``sftp`` with a batch of commands (mkdir, put, rename, ls, get, rm, rmdir);
- ``ssh -L`` to a TCP service that only the node's side reaches;
- ``ssh -A``: ``ssh-add -l`` on the node lists the key of the client's agent.

``ssh`` with both ProxyCommand forms, ``ssh -J`` and plain ``ssh NODE.CLUSTER``
after ``tsh config`` are covered by ``tests/test_tsh.py`` and
``tests/e2e/test_quickstart.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .cluster import CLUSTER, NODENAME, SSH, base_env, free_ports, run
from .test_full_path import (
    RunningCluster,
    cluster_running,
    invite_over_http,
    os_account,
    tsh,
    tsh_login_on_a_terminal,
)

LOGIN = f"tpossh{os.getpid()}"
TARGET = f"{LOGIN}@{NODENAME}.{CLUSTER}"
SCP = shutil.which("scp") or "/usr/bin/scp"
SFTP = shutil.which("sftp") or "/usr/bin/sftp"
SSH_AGENT = shutil.which("ssh-agent") or "/usr/bin/ssh-agent"
SSH_ADD = shutil.which("ssh-add") or "/usr/bin/ssh-add"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


@dataclass
class Setup:
    cluster: RunningCluster
    config: Path
    home: Path

    def openssh(self, program: str, *args: str, env: dict[str, str] | None = None) -> str:
        """Run an OpenSSH program with tsh's configuration; its stdout (asserts success)."""
        done = run([program, "-F", str(self.config), "-o", "BatchMode=yes", *args], env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def remote(self, name: str) -> Path:
        return Path(pwd.getpwnam(LOGIN).pw_dir) / name


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("openssh")
    with cluster_running(tmp) as cluster, os_account(LOGIN) as login:
        totp = invite_over_http(cluster, "dave", login)
        home = tmp / "dave-tsh"
        tsh_login_on_a_terminal(cluster, home, "dave", totp)
        snippet = tsh(home, "config")
        assert snippet.returncode == 0, snippet.stderr
        config = tmp / "ssh_config"
        config.write_text(snippet.stdout)
        yield Setup(cluster, config, home)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("mode", ["sftp", "legacy"])
def test_scp_copies_both_ways(setup: Setup, mode: str) -> None:
    flags = ["-O"] if mode == "legacy" else ["-s"]
    local = setup.cluster.tmp / f"scp-{mode}.bin"
    local.write_bytes(os.urandom(2 * 1024 * 1024 + 3))
    local.chmod(0o640)
    setup.openssh(SCP, *flags, "-p", str(local), f"{TARGET}:scp-{mode}.bin")
    remote = setup.remote(f"scp-{mode}.bin")
    assert digest(remote) == digest(local)
    assert remote.stat().st_uid == pwd.getpwnam(LOGIN).pw_uid
    assert remote.stat().st_mode & 0o777 == 0o640  # -p kept the mode

    back = setup.cluster.tmp / f"scp-{mode}-back.bin"
    setup.openssh(SCP, *flags, f"{TARGET}:scp-{mode}.bin", str(back))
    assert digest(back) == digest(local)

    # What the login may not read is refused, in both modes.
    done = run(
        [SCP, "-F", str(setup.config), "-o", "BatchMode=yes", *flags, f"{TARGET}:/etc/shadow", "x"]
    )
    assert done.returncode != 0
    assert "Permission denied" in done.stderr or "permission denied" in done.stderr


def test_sftp_runs_a_batch_of_file_commands(setup: Setup) -> None:
    tmp = setup.cluster.tmp
    (tmp / "notes.txt").write_text("hello from sftp\n")
    batch = tmp / "batch"
    batch.write_text(
        "mkdir box\n"
        f"put {tmp / 'notes.txt'} box/notes.txt\n"
        "rename box/notes.txt box/renamed.txt\n"
        "ls -1 box\n"
        f"get box/renamed.txt {tmp / 'fetched.txt'}\n"
        "rm box/renamed.txt\n"
        "rmdir box\n"
        "pwd\n"
    )
    out = setup.openssh(SFTP, "-b", str(batch), TARGET)
    assert "box/renamed.txt" in out
    assert f"Remote working directory: {pwd.getpwnam(LOGIN).pw_dir}" in out
    assert (tmp / "fetched.txt").read_text() == "hello from sftp\n"
    assert not setup.remote("box").exists()


class EchoServer:
    """A TCP service on loopback that answers each line in capitals."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data.upper())

    def close(self) -> None:
        self.sock.close()


def _connect_when_listening(port: int, process: subprocess.Popen[bytes]) -> socket.socket | None:
    """A connection to ``ssh -L``'s port once it listens; None if ssh exited first."""
    deadline = time.monotonic() + 30
    while process.poll() is None:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "ssh -L never listened"
            time.sleep(0.1)
    return None


@contextlib.contextmanager
def forwarded(config: Path, target: str, destination: str = TARGET) -> Iterator[socket.socket]:
    """``ssh -N -L PORT:TARGET DESTINATION`` through the proxy; a connection to PORT.

    The free port is picked a moment before ssh binds it: if another program took
    it meanwhile, ssh exits ("Address already in use") and another port is tried.
    """
    for _attempt in range(3):
        (local_port,) = free_ports(1)
        process = subprocess.Popen(
            [
                *(SSH, "-F", str(config), "-o", "BatchMode=yes", "-N"),
                *("-o", "ExitOnForwardFailure=yes"),
                *("-L", f"127.0.0.1:{local_port}:{target}", destination),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=base_env(),
        )
        try:
            conn = _connect_when_listening(local_port, process)
            if conn is not None:
                with conn:
                    yield conn
                return
        finally:
            if process.poll() is None:
                process.terminate()
            _, err = process.communicate(timeout=10)
        if b"Address already in use" not in err:
            raise AssertionError(f"ssh -L exited: {err.decode(errors='replace')}")
    raise AssertionError("ssh -L found no free port in three attempts")


def test_ssh_L_forwards_a_local_port_through_the_node(setup: Setup) -> None:
    echo = EchoServer()
    try:
        with forwarded(setup.config, f"127.0.0.1:{echo.port}") as conn:
            conn.sendall(b"through the tunnel\n")
            got = b""
            while len(got) < 19:
                chunk = conn.recv(4096)
                assert chunk, got
                got += chunk
        assert got == b"THROUGH THE TUNNEL\n"
        # The node, not the client, made the connection (both on loopback here).
        assert echo.peers and echo.peers[0][0] == "127.0.0.1"
    finally:
        echo.close()


def test_ssh_A_lets_the_node_use_the_clients_agent(setup: Setup) -> None:
    tmp = setup.cluster.tmp
    socket_path = tmp / "agent.sock"
    key = tmp / "agent_key"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    fingerprint = run([SSH_KEYGEN, "-l", "-f", str(key)]).stdout.split()[1]
    agent = subprocess.Popen(
        [SSH_AGENT, "-D", "-a", str(socket_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert agent.stdout is not None
        assert b"SSH_AUTH_SOCK" in agent.stdout.readline()  # printed once it listens
        env = base_env(SSH_AUTH_SOCK=str(socket_path))
        added = run([SSH_ADD, str(key)], env=env)
        assert added.returncode == 0, added.stderr

        listed = setup.openssh(SSH, "-A", TARGET, "ssh-add -l", env=env)
        assert fingerprint in listed
        # Without -A the node has no agent to ask.
        done = run(
            [SSH, "-F", str(setup.config), "-o", "BatchMode=yes", TARGET, "ssh-add -l"], env=env
        )
        assert done.returncode == 2  # "Could not open a connection to your authentication agent"
        assert fingerprint not in done.stdout
    finally:
        agent.terminate()
        agent.wait(10)
        assert agent.stdout is not None
        agent.stdout.close()
