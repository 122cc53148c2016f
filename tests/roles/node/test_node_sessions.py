"""Shells and commands on a node, through real OpenSSH, as the OS login the roles allow."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import termios

import trio

from .conftest import (
    ALICE_LOGIN,
    BOB_LOGIN,
    GHOST_LOGIN,
    Cluster,
    OSUsers,
    run_ssh,
    ssh_argv,
    ssh_options,
    wait_for,
)


async def test_command_runs_as_the_login_with_its_account(
    cluster: Cluster, os_users: OSUsers
) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    script = (
        "id -u; id -g; id -G; pwd; "
        'echo "$HOME|$USER|$LOGNAME|$SHELL|$PATH"; '
        'echo "$TRIOPORT_USER|$TRIOPORT_CLUSTER|$SSH_SESSION_ID"; '
        "echo oops >&2; exit 7"
    )
    result = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, script))
    assert result.returncode == 7
    lines = result.stdout.decode().splitlines()
    account = os_users.alice
    assert lines[0] == str(account.pw_uid)
    assert lines[1] == str(account.pw_gid)
    assert str(account.pw_gid) in lines[2].split()
    assert lines[3] == account.pw_dir
    home, user, logname, shell, path = lines[4].split("|")
    assert (home, user, logname, shell) == (account.pw_dir, ALICE_LOGIN, ALICE_LOGIN, "/bin/bash")
    assert "/usr/bin" in path.split(":")
    tp_user, tp_cluster, sid = lines[5].split("|")
    assert (tp_user, tp_cluster) == ("alice", "node-test.cluster")
    assert len(sid) == 36
    assert result.stderr == b"oops\n"


async def test_another_login_has_its_own_account_and_shell(
    cluster: Cluster, os_users: OSUsers
) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN, BOB_LOGIN])
    alice = await cluster.login("alice")
    result = await run_ssh(ssh_argv(alice, node, BOB_LOGIN, 'id -un; echo "$SHELL"; echo "$LANG"'))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [BOB_LOGIN, "/bin/sh", "C.UTF-8"]


async def test_client_lang_is_taken_other_variables_are_not(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    argv = ssh_argv(
        alice,
        node,
        ALICE_LOGIN,
        'echo "$LANG|$EVIL"',
        options={"SetEnv": "LANG=fr_FR.UTF-8 EVIL=1"},
    )
    result = await run_ssh(argv)
    assert result.stdout == b"fr_FR.UTF-8|\n"


async def test_stdin_reaches_the_command_and_a_signal_is_reported(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    result = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "tr a-z A-Z"), stdin=b"hello\n")
    assert (result.returncode, result.stdout) == (0, b"HELLO\n")
    killed = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "kill -TERM $$"))
    # OpenSSH's ssh exits 255 when the remote command died of a signal.
    assert killed.returncode == 255
    assert b"signal" in killed.stderr.lower() or killed.stderr == b""


async def test_login_without_an_os_account_gets_a_clear_error(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [GHOST_LOGIN])
    alice = await cluster.login("alice")
    result = await run_ssh(ssh_argv(alice, node, GHOST_LOGIN, "true"))
    assert result.returncode == 1
    assert f"the login '{GHOST_LOGIN}' has no account on node1".encode() in result.stderr
    # The node is fine afterwards.
    await cluster.add_user("bob", [ALICE_LOGIN])
    bob = await cluster.login("bob")
    ok = await run_ssh(ssh_argv(bob, node, ALICE_LOGIN, "echo fine"))
    assert ok.stdout == b"fine\n"


async def _pty_ssh(argv: list[str], rows: int, cols: int) -> tuple[trio.Process, int]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = await trio.lowlevel.open_process(
        argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    return proc, master


class Screen:
    """The terminal ssh runs on: what it printed so far."""

    def __init__(self, master: int) -> None:
        self.fd = master
        self.stream = trio.lowlevel.FdStream(master)
        self.output = bytearray()

    async def wait_for(self, marker: bytes) -> None:
        with trio.fail_after(30):
            while marker not in self.output:
                try:
                    self.output += await self.stream.receive_some()
                except OSError:  # EIO: ssh exited
                    raise AssertionError(f"no {marker!r} in {bytes(self.output)!r}") from None


async def test_shell_on_a_pty_follows_window_changes(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    argv = ssh_argv(
        alice, node, ALICE_LOGIN, "-tt", "tty; stty size; echo $TERM; read line; stty size; exit 3"
    )
    proc, master = await _pty_ssh(argv, 30, 100)
    screen = Screen(master)
    try:
        await screen.wait_for(b"30 100")
        assert b"/dev/pts/" in screen.output
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc.send_signal(signal.SIGWINCH)
        await trio.sleep(0.5)  # let ssh send window-change before the newline
        await screen.stream.send_all(b"\n")
        await screen.wait_for(b"40 120")
        with trio.fail_after(30):
            assert await proc.wait() == 3
    finally:
        if proc.returncode is None:
            proc.kill()
        await screen.stream.aclose()


async def test_sftp_and_scp_work_as_the_login(cluster: Cluster, os_users: OSUsers) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    source = cluster.tmp / "upload.bin"
    payload = os.urandom(300_000)
    source.write_bytes(payload)
    ssh_opts = ssh_options(alice)
    batch = f"put {source} up.bin\nget up.bin {cluster.tmp / 'down.bin'}\n"
    sftp = ["sftp", "-P", str(node.port), *ssh_opts, "-b", "-", f"{ALICE_LOGIN}@127.0.0.1"]
    result = await run_ssh(sftp, stdin=batch.encode())
    assert result.returncode == 0, result.stderr
    assert (cluster.tmp / "down.bin").read_bytes() == payload
    uploaded = os.stat(os.path.join(os_users.alice.pw_dir, "up.bin"))
    assert (uploaded.st_uid, uploaded.st_gid) == (os_users.alice.pw_uid, os_users.alice.pw_gid)
    # scp (SFTP mode in OpenSSH 9) back again.
    scp = ["scp", "-P", str(node.port), *ssh_opts, f"{ALICE_LOGIN}@127.0.0.1:up.bin"]
    result = await run_ssh([*scp, str(cluster.tmp / "scp.bin")])
    assert result.returncode == 0, result.stderr
    assert (cluster.tmp / "scp.bin").read_bytes() == payload
    # A file the login may not read stays unread.
    denied = await run_ssh([*scp[:-1], f"{ALICE_LOGIN}@127.0.0.1:/etc/shadow", "/dev/null"])
    assert denied.returncode != 0
    assert b"Permission denied" in denied.stderr


async def test_an_unknown_subsystem_is_refused(cluster: Cluster) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    result = await run_ssh(ssh_argv(alice, node, ALICE_LOGIN, "-s", "nonesuch"))
    assert result.returncode == 255
    assert b"subsystem request failed" in result.stderr


def _processes_of(uid: int, marker: bytes) -> list[int]:
    """Pids of ``uid``'s processes whose command line (NUL-separated) holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


async def test_a_client_that_leaves_takes_its_commands_with_it(
    cluster: Cluster, os_users: OSUsers
) -> None:
    node = await cluster.start_node()
    await cluster.add_user("alice", [ALICE_LOGIN])
    alice = await cluster.login("alice")
    uid = os_users.alice.pw_uid
    for flag, marker in (("-T", "301"), ("-tt", "302")):
        argv = ssh_argv(alice, node, ALICE_LOGIN, flag, f"sleep {marker} & sleep 1{marker}")
        proc, master = await _pty_ssh(argv, 24, 80)
        screen = Screen(master)

        async def running(text: str = f"sleep\0{marker}\0") -> bool:
            return bool(_processes_of(uid, text.encode()))

        async def gone(text: str = f"sleep\0{marker}\0") -> bool:
            return not _processes_of(uid, text.encode())

        try:
            await wait_for(running, step=0.05)
            proc.kill()  # the client vanishes
            await proc.wait()
            await wait_for(gone, step=0.05)
        finally:
            await screen.stream.aclose()
