"""OpenSSH's ``sftp`` and ``scp`` (9.2, SFTP and legacy modes) against our sftp subsystem.

The server is trioport's own (``trioport.ssh.serve`` + ``serve_session``) with
``serve_sftp`` as the ``sftp`` subsystem, and every session runs as ``nobody``, so
the kernel's permission checks for that login are what the tests observe. Files
live in a scratch directory under /tmp that ``nobody`` can reach.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio

from trioport.roles.node.sftp_server import serve_sftp
from trioport.ssh import connect, serve
from trioport.ssh.session import SessionPolicy
from trioport.ssh.sftp_client import SFTPError, open_sftp
from trioport.sshproto import ConnectionConfig, HostKey, Role, sftp
from trioport.sshproto import events as ev
from trioport.sshproto.sftp import StatusCode

from .conftest import ShellServerHandler

pytestmark = pytest.mark.interop

SFTP = shutil.which("sftp") or "/usr/bin/sftp"
SCP = shutil.which("scp") or "/usr/bin/scp"
NOBODY = pwd.getpwnam("nobody")
CLIENT = ConnectionConfig(role=Role.CLIENT)

OPTIONS = {
    "StrictHostKeyChecking": "no",
    "UserKnownHostsFile": "/dev/null",
    "GlobalKnownHostsFile": "/dev/null",
    "BatchMode": "yes",
    "IdentitiesOnly": "yes",
    "LogLevel": "ERROR",
    "ConnectTimeout": "20",
}


@dataclass
class Area:
    """A scratch tree: ``home`` belongs to nobody, ``secret`` is root's and 0600."""

    top: pathlib.Path
    home: pathlib.Path
    secret: pathlib.Path
    local: pathlib.Path


@pytest.fixture
def area() -> Iterator[Area]:
    top = pathlib.Path(tempfile.mkdtemp(prefix="trioport-sftp-", dir="/tmp"))
    top.chmod(0o755)
    home = top / "home"
    home.mkdir()
    os.chown(home, NOBODY.pw_uid, NOBODY.pw_gid)
    secret = top / "secret.txt"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    local = top / "local"  # the client's side (the client runs as root)
    local.mkdir()
    try:
        yield Area(top, home, secret, local)
    finally:
        shutil.rmtree(top)


@dataclass
class Server:
    port: int
    subsystem_calls: list[str]


@pytest.fixture
async def sftp_server(nursery, user_key, server_host_key, area):
    """Start our SSH server with the sftp subsystem; sessions run as nobody in ``home``."""

    async def start(**sftp_options) -> Server:
        calls: list[str] = []
        options = {"user": "nobody", "cwd": str(area.home), **sftp_options}

        async def subsystem(chan) -> None:
            calls.append("sftp")
            await serve_sftp(chan, **options)

        policy = SessionPolicy(
            subsystems={"sftp": subsystem},
            user=NOBODY.pw_uid,
            group=NOBODY.pw_gid,
            extra_groups=[],
            cwd=str(area.home),
            environment={"HOME": str(area.home)},
        )
        handler = ShellServerHandler({user_key.key.public.blob}, policy)
        config = ConnectionConfig(role=Role.SERVER, host_keys=[HostKey(server_host_key)])
        addresses = await nursery.start(
            functools.partial(serve, 0, config, lambda: handler, host="127.0.0.1")
        )
        return Server(addresses[0][1], calls)

    return start


def _options() -> list[str]:
    out = ["-F", "/dev/null"]
    for k, v in OPTIONS.items():
        out += ["-o", f"{k}={v}"]
    return out


async def run(cmd: list[str], check: bool = True, cwd: pathlib.Path | None = None):
    with trio.fail_after(90):
        return await trio.run_process(
            cmd, capture_stdout=True, capture_stderr=True, check=check, cwd=cwd
        )


async def sftp_batch(server: Server, key, area: Area, commands: str, check: bool = True):
    batch = area.local / "batch"
    batch.write_text(commands)
    cmd = [SFTP, *_options(), "-P", str(server.port), "-i", str(key.path), "-b", str(batch)]
    result = await run([*cmd, "nobody@127.0.0.1"], check=False, cwd=area.local)
    if check and result.returncode:
        raise AssertionError(result.stdout.decode() + result.stderr.decode())
    return result


async def scp(server: Server, key, *args: str, legacy: bool = False, check: bool = True):
    cmd = [SCP, *_options(), "-P", str(server.port), "-i", str(key.path)]
    if legacy:
        cmd.append("-O")
    return await run([*cmd, *args], check=check)


def remote(path: pathlib.Path | str) -> str:
    return f"nobody@127.0.0.1:{path}"


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- sftp -------------------------------------------------------------------------------


async def test_sftp_batch_put_get_ls_mkdir_rename_chmod_symlink_rm_df(
    sftp_server, user_key, area
) -> None:
    server = await sftp_server()
    (area.local / "hello.txt").write_bytes(b"hello over sftp\n")
    result = await sftp_batch(
        server,
        user_key,
        area,
        "pwd\n"
        "mkdir docs\n"
        "put hello.txt docs/hello.txt\n"
        "rename docs/hello.txt docs/renamed.txt\n"
        "chmod 640 docs/renamed.txt\n"
        "symlink renamed.txt docs/link\n"
        "ls -l docs\n"
        "get docs/link fetched.txt\n"
        "put hello.txt doomed.txt\n"
        "rm doomed.txt\n"
        "df -h\n",
    )
    out = result.stdout.decode()
    assert f"Remote working directory: {area.home}" in out
    renamed = area.home / "docs" / "renamed.txt"
    assert renamed.read_bytes() == b"hello over sftp\n"
    assert renamed.stat().st_mode & 0o777 == 0o640
    assert (renamed.stat().st_uid, renamed.stat().st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert os.readlink(area.home / "docs" / "link") == "renamed.txt"
    assert (area.local / "fetched.txt").read_bytes() == b"hello over sftp\n"
    assert not (area.home / "doomed.txt").exists()
    # ls -l prints our long names; df needs statvfs@openssh.com.
    assert "-rw-r-----" in out and "nobody" in out and "renamed.txt" in out
    assert "Size" in out and "Avail" in out
    assert server.subsystem_calls == ["sftp"]


async def test_sftp_hardlink_copy_resume_and_fsync(sftp_server, user_key, area) -> None:
    server = await sftp_server()
    data = os.urandom(300_000)
    (area.local / "whole.bin").write_bytes(data)
    (area.home / "half.bin").write_bytes(data[:100_000])  # an interrupted upload
    (area.local / "part.bin").write_bytes(data[:70_000])  # an interrupted download
    (area.home / "src.bin").write_bytes(data)
    for name in ("half.bin", "src.bin"):  # nobody's own files
        os.chown(area.home / name, NOBODY.pw_uid, NOBODY.pw_gid)
    await sftp_batch(
        server,
        user_key,
        area,
        "ln src.bin hard.bin\n"  # hardlink@openssh.com
        "cp src.bin copy.bin\n"  # copy-data
        "reput whole.bin half.bin\n"  # stat, then WRITE from the remote size on
        "reget src.bin part.bin\n"
        "put -f whole.bin synced.bin\n",  # fsync@openssh.com after the upload
    )
    assert (area.home / "hard.bin").stat().st_ino == (area.home / "src.bin").stat().st_ino
    assert (area.home / "copy.bin").read_bytes() == data
    assert (area.home / "copy.bin").stat().st_ino != (area.home / "src.bin").stat().st_ino
    assert (area.home / "half.bin").read_bytes() == data
    assert (area.local / "part.bin").read_bytes() == data
    assert (area.home / "synced.bin").read_bytes() == data


async def test_sftp_rename_refuses_to_replace_but_posix_rename_does(
    sftp_server, user_key, area
) -> None:
    server = await sftp_server()
    for name in ("a", "b"):
        (area.home / name).write_text(name)
    # sftp's "rename" uses posix-rename@openssh.com when offered: it replaces.
    await sftp_batch(server, user_key, area, "rename a b\n")
    assert (area.home / "b").read_text() == "a"
    assert not (area.home / "a").exists()
    # The draft's SSH_FXP_RENAME must not replace: our own client shows it.
    (area.home / "c").write_text("c")
    async with (
        connect(
            "127.0.0.1", server.port, username="x", signers=[user_key.key], config=CLIENT
        ) as conn,
        open_sftp(conn) as client,
    ):
        with pytest.raises(SFTPError) as failure:
            await client._status(lambda i: sftp.Rename(i, b"b", b"c"), b"b")
        assert failure.value.code == StatusCode.FAILURE
    assert (area.home / "c").read_text() == "c"


async def test_sftp_reports_permission_denied_as_the_login(sftp_server, user_key, area) -> None:
    server = await sftp_server()
    (area.local / "f").write_text("x")
    locked = area.top / "rootdir"
    locked.mkdir(mode=0o755)
    result = await sftp_batch(
        server,
        user_key,
        area,
        f"-get {area.secret} stolen.txt\n-put f {locked}/f\n-mkdir {locked}/sub\n"
        f"-rm {area.secret}\n-chmod 666 {area.secret}\n",
    )
    err = result.stderr.decode()
    assert err.count("Permission denied") == 5, err
    assert not (area.local / "stolen.txt").exists()
    assert list(locked.iterdir()) == []
    assert area.secret.stat().st_mode & 0o777 == 0o600


async def test_paths_resolve_as_the_os_allows(sftp_server, user_key, area) -> None:
    server = await sftp_server()
    up = "../" * 10
    result = await sftp_batch(
        server,
        user_key,
        area,
        f"get {up}etc/passwd passwd\n-get {up}etc/shadow shadow\n-get ../secret.txt s\n"
        f"cd {up}\npwd\n",
    )
    # Walking out of the start directory is not a privilege: nobody may read
    # /etc/passwd anyway, and may not read /etc/shadow or root's 0600 file.
    assert sha256(area.local / "passwd") == sha256(pathlib.Path("/etc/passwd"))
    assert not (area.local / "shadow").exists()
    assert not (area.local / "s").exists()
    assert result.stderr.decode().count("Permission denied") == 2
    assert "Remote working directory: /\n" in result.stdout.decode()


async def test_chroot_keeps_every_path_inside(sftp_server, user_key, area) -> None:
    server = await sftp_server(root=str(area.top), cwd="/home")
    result = await sftp_batch(
        server,
        user_key,
        area,
        "pwd\nls -1 /\nls -1 ../../..\n-get /../../etc/passwd p\nput batch /home/b\nls -l /\n",
    )
    out = result.stdout.decode()
    assert "-rw-------" in out  # long listings work inside the chroot
    assert "Remote working directory: /home" in out
    assert "/etc" not in out.replace("/etc/passwd", "")
    assert out.count("secret.txt") == 3  # "/" and "../../.." are both the chroot
    assert not (area.local / "p").exists()
    assert (area.home / "b").read_bytes() == (area.local / "batch").read_bytes()


async def test_a_login_without_an_account_gets_a_clear_error(sftp_server, user_key, area) -> None:
    server = await sftp_server(user="no-such-login-here")
    result = await sftp_batch(server, user_key, area, "pwd\n", check=False)
    assert result.returncode != 0
    assert b"sftp: no such user: no-such-login-here" in result.stderr


async def test_a_chroot_that_fails_ends_the_session(sftp_server, user_key, area) -> None:
    server = await sftp_server(root=str(area.top / "missing"))
    result = await sftp_batch(server, user_key, area, "pwd\n", check=False)
    assert result.returncode != 0
    assert b"Remote working directory" not in result.stdout


# --- scp ---------------------------------------------------------------------------------


async def test_scp_uses_sftp_and_copies_both_ways(sftp_server, user_key, area) -> None:
    server = await sftp_server()
    (area.local / "up.bin").write_bytes(os.urandom(100_000))
    await scp(server, user_key, str(area.local / "up.bin"), remote("up.bin"))
    assert sha256(area.home / "up.bin") == sha256(area.local / "up.bin")
    await scp(server, user_key, remote("~/up.bin"), str(area.local / "down.bin"))
    assert sha256(area.local / "down.bin") == sha256(area.local / "up.bin")
    assert server.subsystem_calls == ["sftp", "sftp"]


async def test_scp_legacy_mode_runs_scp_on_the_server(sftp_server, user_key, area) -> None:
    server = await sftp_server()
    (area.local / "up.txt").write_text("legacy\n")
    await scp(server, user_key, str(area.local / "up.txt"), remote("legacy.txt"), legacy=True)
    assert (area.home / "legacy.txt").read_text() == "legacy\n"
    assert (area.home / "legacy.txt").stat().st_uid == NOBODY.pw_uid
    await scp(server, user_key, remote("legacy.txt"), str(area.local / "back.txt"), legacy=True)
    assert (area.local / "back.txt").read_text() == "legacy\n"
    denied = await scp(
        server, user_key, remote(area.secret), str(area.local / "s"), legacy=True, check=False
    )
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    assert server.subsystem_calls == []


def _make_tree(top: pathlib.Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "sub/b.bin": os.urandom(70_000),
        "sub/deeper/c.txt": b"gamma\n",
        "empty/.keep": b"",
    }
    for name, data in files.items():
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@pytest.mark.parametrize("legacy", [False, True], ids=["sftp", "legacy"])
async def test_scp_recursive_both_ways(sftp_server, user_key, area, legacy) -> None:
    server = await sftp_server()
    files = _make_tree(area.local / "tree")
    await scp(server, user_key, "-r", str(area.local / "tree"), remote("tree"), legacy=legacy)
    for name, data in files.items():
        assert (area.home / "tree" / name).read_bytes() == data
    await scp(server, user_key, "-r", remote("tree"), str(area.local / "back"), legacy=legacy)
    for name, data in files.items():
        assert (area.local / "back" / name).read_bytes() == data


async def test_twenty_mib_both_ways_with_matching_sha256(sftp_server, user_key, area) -> None:
    server = await sftp_server()
    big = area.local / "big.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))
    await scp(server, user_key, str(big), remote("big.bin"))
    assert sha256(area.home / "big.bin") == sha256(big)
    await sftp_batch(server, user_key, area, "get big.bin big-back.bin\n")
    assert sha256(area.local / "big-back.bin") == sha256(big)


async def test_scp_download_of_an_unreadable_file_says_permission_denied(
    sftp_server, user_key, area
) -> None:
    server = await sftp_server()
    result = await scp(server, user_key, remote(area.secret), str(area.local / "s"), check=False)
    assert result.returncode != 0
    assert b"Permission denied" in result.stderr
    assert not (area.local / "s").exists()


# --- our client --------------------------------------------------------------------------


async def test_our_client_gets_puts_and_lists(sftp_server, user_key, area) -> None:
    server = await sftp_server()
    data = os.urandom(3 * 1024 * 1024 + 17)
    (area.local / "mine.bin").write_bytes(data)
    async with (
        connect(
            "127.0.0.1", server.port, username="x", signers=[user_key.key], config=CLIENT
        ) as conn,
        open_sftp(conn) as client,
    ):
        assert client.limits.max_read_length == sftp.MAX_READ
        assert await client.realpath(".") == os.fsencode(area.home)
        # Progress is told piece by piece, as each write is confirmed or each read lands.
        sent: list[int] = []
        assert await client.put(area.local / "mine.bin", "mine.bin", on_bytes=sent.append) == len(
            data
        )
        assert (area.home / "mine.bin").read_bytes() == data
        assert sum(sent) == len(data) and len(sent) > 1
        received: list[int] = []
        got = await client.get("mine.bin", area.local / "again.bin", on_bytes=received.append)
        assert got == len(data)
        assert (area.local / "again.bin").read_bytes() == data
        assert sum(received) == len(data) and len(received) > 1
        await client.mkdir("d")
        await client.symlink("../mine.bin", "d/l")
        assert await client.readlink("d/l") == b"../mine.bin"
        names = sorted(e.filename for e in await client.listdir("."))
        assert names == [b"d", b"mine.bin"]
        assert (await client.stat("d/l")).size == len(data)
        with pytest.raises(SFTPError) as denied:
            await client.get(str(area.secret), area.local / "s")
        assert denied.value.code == StatusCode.PERMISSION_DENIED
        with pytest.raises(SFTPError) as directory:  # opens, then READ fails: EISDIR
            await client.get(".", area.local / "dir")
        assert directory.value.code == StatusCode.FAILURE
        with pytest.raises(SFTPError) as denied:
            await client.put(area.local / "mine.bin", str(area.top / "not-mine.bin"))
        assert denied.value.code == StatusCode.PERMISSION_DENIED
        with pytest.raises(SFTPError) as missing:
            await client.stat("nope")
        assert missing.value.code == StatusCode.NO_SUCH_FILE
        await client.remove("d/l")
        await client.rmdir("d")
        assert not (area.home / "d").exists()


def sftp_children() -> list[int]:
    """Our sftp child processes (the server runs in this test's process)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"trioport.roles.node.sftp_server" in cmdline:
            found.append(int(entry.name))
    return found


async def test_the_child_runs_as_the_login_and_dies_with_the_session(sftp_server, user_key) -> None:
    server = await sftp_server()
    with trio.CancelScope() as scope:
        async with (
            connect(
                "127.0.0.1", server.port, username="x", signers=[user_key.key], config=CLIENT
            ) as conn,
            open_sftp(conn),
        ):
            (child,) = sftp_children()
            status = pathlib.Path(f"/proc/{child}/status").read_text()  # noqa: ASYNC240
            uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uids.split()[1:] == [str(NOBODY.pw_uid)] * 4  # real, effective, saved, fs
            scope.cancel()  # the client vanishes mid-session
            await trio.sleep_forever()
    with trio.fail_after(10):
        while sftp_children():  # noqa: ASYNC110 - other processes
            await trio.sleep(0.05)


# --- hostile clients -----------------------------------------------------------------------


async def _raw_subsystem(conn):
    chan = await conn.open_session()
    assert await chan.request(ev.Subsystem(name="sftp"))
    return chan


async def _read_until_closed(chan) -> bytes:
    out = bytearray()
    with trio.fail_after(30):
        while data := await chan.receive_some():
            out += data
        await chan.wait_closed()
    return bytes(out)


async def _hostile(server: Server, user_key, first: bytes, *more: bytes):
    """Send ``first`` (after INIT unless it is the INIT), then ``more``; collect what comes."""
    async with connect(
        "127.0.0.1", server.port, username="x", signers=[user_key.key], config=CLIENT
    ) as conn:
        chan = await _raw_subsystem(conn)
        await chan.send_all(first)
        for data in more:
            await chan.send_all(data)
        await chan.send_eof()
        reply = await _read_until_closed(chan)
        status = chan.exit_status
        # One bad session ends only itself: the connection still works.
        assert (await conn.run("echo alive")).stdout == b"alive\n"
    return reply, status


INIT = sftp.frame(sftp.Init(3))


async def test_a_message_over_256_kib_ends_the_subsystem(sftp_server, user_key) -> None:
    server = await sftp_server()
    too_long = (sftp.MAX_MESSAGE + 1).to_bytes(4, "big") + b"\x06" + bytes(4096)
    reply, status = await _hostile(server, user_key, INIT, too_long)
    session = sftp.ClientSession()
    session.receive_data(reply)
    assert isinstance(session.next_response(), sftp.Version)
    assert session.next_response() is None  # nothing after VERSION
    assert status == 2


async def test_a_message_of_exactly_256_kib_is_served(sftp_server, user_key, area) -> None:
    server = await sftp_server()
    async with connect(
        "127.0.0.1", server.port, username="x", signers=[user_key.key], config=CLIENT
    ) as conn:
        chan = await _raw_subsystem(conn)
        session = sftp.ClientSession()
        await chan.send_all(session.start())
        open_ = sftp.Open(1, b"max.bin", sftp.OpenFlags.WRITE | sftp.OpenFlags.CREAT)
        await chan.send_all(sftp.frame(open_))
        responses = []
        while len(responses) < 2:
            session.receive_data(await chan.receive_some())
            while (r := session.next_response()) is not None:
                responses.append(r)
        handle = responses[1].handle
        room = sftp.MAX_MESSAGE - len(sftp.encode(sftp.Write(2, handle, 0, b"")))
        write = sftp.frame(sftp.Write(2, handle, 0, bytes(room)))
        assert len(write) == 4 + sftp.MAX_MESSAGE
        await chan.send_all(write)
        await chan.send_all(sftp.frame(sftp.Close(3, handle)))
        while len(responses) < 4:
            session.receive_data(await chan.receive_some())
            while (r := session.next_response()) is not None:
                responses.append(r)
        await chan.send_eof()
        await _read_until_closed(chan)
    assert responses[2:] == [
        sftp.Status(2, StatusCode.OK, "Success"),
        sftp.Status(3, StatusCode.OK, "Success"),
    ]
    assert (area.home / "max.bin").stat().st_size == room
    assert chan.exit_status == 0


async def test_reads_are_clamped_to_255_kib(sftp_server, user_key, area) -> None:
    server = await sftp_server()
    (area.home / "big").write_bytes(bytes(1 << 20))
    async with (
        connect(
            "127.0.0.1", server.port, username="x", signers=[user_key.key], config=CLIENT
        ) as conn,
        open_sftp(conn) as client,
    ):
        handle = await client._handle(lambda i: sftp.Open(i, b"big", sftp.OpenFlags.READ), b"big")
        reply = await client._request(lambda i: sftp.Read(i, handle, 0, 1 << 20), b"big")
        assert isinstance(reply, sftp.Data)
        assert len(reply.data) == sftp.MAX_READ == 255 * 1024


async def test_requests_before_init_are_refused(sftp_server, user_key, area) -> None:
    server = await sftp_server()
    before = sftp.frame(sftp.Open(1, b"made-before-init", sftp.OpenFlags.WRITE | 8))
    reply, status = await _hostile(server, user_key, before, INIT)
    assert reply == b""
    assert status == 2
    assert not (area.home / "made-before-init").exists()


@pytest.mark.parametrize(
    ("garbage", "status"),
    [
        (b"\x00\x00\x00\x00", 2),  # a zero-length packet
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 2),  # "GET " is a 1.1 GB length
        (INIT + b"\x00\x00\x00\x02\x03\x00", 2),  # OPEN cut short inside its id
        (INIT + INIT, 2),  # INIT twice
        (bytes(range(255, -1, -1)) * 8, 2),
        (INIT + b"\x00\x00\x01\x00\x03", 0),  # EOF in the middle of a packet
    ],
    ids=["empty-packet", "http", "truncated-open", "init-twice", "bytes", "eof-mid-packet"],
)
async def test_garbage_ends_the_subsystem_cleanly(sftp_server, user_key, garbage, status) -> None:
    server = await sftp_server()
    _reply, exit_status = await _hostile(server, user_key, garbage)
    assert exit_status == status


async def test_unknown_requests_get_op_unsupported(sftp_server, user_key) -> None:
    server = await sftp_server()
    async with (
        connect(
            "127.0.0.1", server.port, username="x", signers=[user_key.key], config=CLIENT
        ) as conn,
        open_sftp(conn) as client,
    ):
        for make in (
            lambda i: sftp.ExtendedRequest(i, b"no-such@example.com", b"data"),
            lambda i: sftp.UnknownRequest(99, i),
        ):
            with pytest.raises(SFTPError) as failure:
                await client._request(make, None)
            assert failure.value.code == StatusCode.OP_UNSUPPORTED
        assert await client.realpath("/") == b"/"  # and the session goes on
