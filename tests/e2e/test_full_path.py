"""The whole path on a real cluster, through the command-line tools a user types.

One ``trioport run`` (auth, proxy and node in one process on free loopback
ports, :mod:`.cluster`) serves the module. An administrator adds carol with
``tctl users add``; the invite is finished through the proxy's HTTP API, as the
web page would (``GET`` the enrolment data, ``PUT`` the password and a TOTP code
computed with pyotp from the secret it returned). carol then logs in with
``tsh login`` on a terminal (pexpect answers the password and TOTP prompts),
lists the node with ``tsh ls``, runs a command and a terminal session with ``tsh
ssh`` (exit status, a ``/dev/pts`` terminal, a window change seen by ``stty
size``), and copies 20 MiB of random bytes to the node and back with ``tsh scp``.

The helpers here (:func:`cluster_running`, :func:`invite_over_http`,
:func:`tsh_login_on_a_terminal`, :func:`os_account`) are shared with the other
end-to-end modules of the whole path (``test_openssh_via_proxy``,
``test_audit_trail``), each of which runs its own cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pwd
import re
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest
import trio

from trioport.authclient import ClientIdentity, connect_auth
from trioport.errors import TrioportError

from .cluster import (
    CLUSTER,
    NODENAME,
    PASSWORD,
    Ports,
    Process,
    Totp,
    base_env,
    free_ports,
    invite_url,
    program,
    run,
    start,
    write_config,
)

TSH = program("tsh")
TCTL = program("tctl")
#: carol's OS login on the node (one per run, so two runs side by side do not collide).
LOGIN = f"tpfull{os.getpid()}"
#: The size of the file copied both ways.
BIG = 20 * 1024 * 1024


# --- shared helpers -----------------------------------------------------------------------


@dataclass
class RunningCluster:
    """A ``trioport run`` with all three services, and where its files are."""

    config: Path
    data_dir: Path
    ports: Ports
    process: Process
    tmp: Path

    @property
    def web(self) -> str:
        return f"127.0.0.1:{self.ports.web}"

    def tctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([TCTL, "--config", str(self.config), *args])

    def https_cert(self) -> Path:
        """The proxy's self-signed HTTPS certificate (made on first start)."""
        found = [
            p
            for p in self.data_dir.rglob("*.pem")
            if "https" in str(p.relative_to(self.data_dir)) and "key" not in p.name
        ]
        assert len(found) == 1, found
        return found[0]


def start_cluster(tmp: Path) -> RunningCluster:
    ports = Ports(*free_ports(4))
    config = write_config(tmp / "trioport.yaml", tmp / "data", ports)
    process = start(config, tmp / "trioport.log")
    return RunningCluster(config, tmp / "data", ports, process, tmp)


def stop_cluster(cluster: RunningCluster) -> None:
    status = cluster.process.stop()
    assert status == 0, cluster.process.stderr
    assert "Traceback" not in cluster.process.stderr, cluster.process.stderr


def _userdel(name: str) -> None:
    subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


@contextlib.contextmanager
def cluster_running(tmp: Path) -> Iterator[RunningCluster]:
    """A cluster for a module (each e2e module of the whole path starts one)."""
    cluster = start_cluster(tmp)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@contextlib.contextmanager
def os_account(name: str) -> Iterator[str]:
    """An OS account on the node for a module's logins (removed afterwards)."""
    _userdel(name)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True)
    try:
        yield pwd.getpwnam(name).pw_name
    finally:
        _userdel(name)


def invite_over_http(cluster: RunningCluster, name: str, login: str) -> Totp:
    """``tctl users add``, then the invite finished through the proxy's HTTP API.

    Returns the user's TOTP codes (from the secret the enrolment handed out).
    """
    added = cluster.tctl("users", "add", name, f"--logins={login}")
    assert added.returncode == 0, added.stderr
    url = invite_url(added.stdout)
    token = url.rsplit("/", 1)[1]
    tls = ssl.create_default_context(cafile=str(cluster.https_cert()))
    with httpx.Client(base_url=f"https://{cluster.web}", verify=tls, timeout=30) as web:
        enrol = web.get(f"/v1/webapi/users/password/token/{token}")
        assert enrol.status_code == 200, enrol.text
        data = enrol.json()
        assert data["user"] == name
        assert data["totp_uri"].startswith("otpauth://totp/")
        totp = Totp(data["totp_secret"])
        # A wrong code is refused and leaves the link usable.
        wrong = web.put(
            "/v1/webapi/users/password/token",
            json={"token": token, "password": PASSWORD, "second_factor_token": totp.wrong_code()},
        )
        assert wrong.status_code == 401, wrong.text
        assert "does not match" in wrong.json()["error"]["message"]
        done = web.put(
            "/v1/webapi/users/password/token",
            json={"token": token, "password": PASSWORD, "second_factor_token": totp.code()},
        )
        assert done.status_code == 200, done.text
        assert done.json()["user"] == name
        again = web.get(f"/v1/webapi/users/password/token/{token}")
        assert again.status_code >= 400  # the link is used up
    return totp


def tsh_env(home: Path, **extra: str) -> dict[str, str]:
    return base_env(TSH_HOME=str(home), **extra)


def tsh_login_on_a_terminal(cluster: RunningCluster, home: Path, name: str, totp: Totp) -> str:
    """``tsh login`` as a person types it at the two prompts; what it printed."""
    child = pexpect.spawn(
        TSH,
        ["login", f"--proxy={cluster.web}", f"--user={name}", "--insecure"],
        env=tsh_env(home),
        encoding="utf-8",
        timeout=30,
    )
    seen = io.StringIO()
    child.logfile_read = seen
    try:
        child.expect(f"Enter password for user {name}: ")
        child.sendline(PASSWORD)
        child.expect("Enter your TOTP code: ")
        child.sendline(totp.code())
        child.expect(pexpect.EOF)
    finally:
        child.close()
    transcript = seen.getvalue()
    assert child.exitstatus == 0, transcript
    assert PASSWORD not in transcript  # not echoed
    return transcript


def tsh(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run([TSH, *args], env=tsh_env(home), stdin=stdin)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- the administrator's view of the audit log (tctl has no events command) ------------

#: Seconds to wait for the node's reports and recordings to reach the auth service.
DELIVERY_TIMEOUT = 30.0


async def _with_admin(cluster: RunningCluster, fn: Any) -> Any:
    identity = ClientIdentity.load(str(cluster.data_dir / "admin"))
    async with connect_auth(f"127.0.0.1:{cluster.ports.auth}", identity) as client:
        return await fn(client)


def events(cluster: RunningCluster, *names: str) -> list[dict[str, Any]]:
    """The audit log's events of the last hour (only ``names``, if given), oldest first."""

    async def search(client: Any) -> list[dict[str, Any]]:
        return await client.search_events(since=time.time() - 3600, events=names, limit=10_000)

    return trio.run(_with_admin, cluster, search)


def recording(cluster: RunningCluster, sid: str) -> bytes:
    """A session's recording, once the node has uploaded all of it."""

    async def fetch(client: Any) -> bytes:
        with trio.fail_after(DELIVERY_TIMEOUT):
            while True:
                try:
                    return await client.fetch_recording(sid)
                except TrioportError:
                    await trio.sleep(0.2)

    return trio.run(_with_admin, cluster, fetch)


def wait_for(cluster: RunningCluster, name: str, match: Any) -> list[dict[str, Any]]:
    """The events ``name`` that ``match``, waiting until there is one."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        found = [e for e in events(cluster, name) if match(e)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


# --- this module's user ---------------------------------------------------------------------


@dataclass
class User:
    name: str
    home: Path
    totp: Totp
    login_transcript: str


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    with cluster_running(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def carol(running: RunningCluster) -> Iterator[User]:
    with os_account(LOGIN) as login:
        totp = invite_over_http(running, "carol", login)
        home = running.tmp / "carol-tsh"
        transcript = tsh_login_on_a_terminal(running, home, "carol", totp)
        yield User("carol", home, totp, transcript)


# --- the path -------------------------------------------------------------------------------


def test_login_after_an_invite_finished_over_http_stores_a_certificate(
    carol: User, running: RunningCluster
) -> None:
    assert "Logged in as: carol" in carol.login_transcript
    assert f"Cluster:      {CLUSTER}" in carol.login_transcript
    assert f"Logins:       {LOGIN}" in carol.login_transcript
    key = carol.home / "keys" / "127.0.0.1" / "carol"
    cert = key.parent / "carol-cert.pub"
    assert key.stat().st_mode & 0o077 == 0
    assert cert.read_text().startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert "@cert-authority" in (carol.home / "known_hosts").read_text()
    status = tsh(carol.home, "status")
    assert status.returncode == 0, status.stderr
    assert "Logged in as: carol" in status.stdout


def test_tsh_ls_lists_the_node_with_its_labels(carol: User, running: RunningCluster) -> None:
    done = tsh(carol.home, "ls")
    assert done.returncode == 0, done.stderr
    rows = [row.split() for row in done.stdout.splitlines()[2:]]
    assert [row[0] for row in rows] == [NODENAME]
    assert f"127.0.0.1:{running.ports.node}" in rows[0]
    assert "env=e2e" in done.stdout
    names = tsh(carol.home, "ls", "env=e2e", "--format=names")
    assert names.stdout.split() == [NODENAME]
    none = tsh(carol.home, "ls", "env=prod", "--format=names")
    assert none.returncode == 0 and none.stdout.split() == []


def test_tsh_ssh_runs_a_command_as_the_login_and_returns_its_exit_status(carol: User) -> None:
    done = tsh(
        carol.home,
        *("ssh", f"{LOGIN}@{NODENAME}"),
        'echo "$(id -un) $TRIOPORT_USER $TRIOPORT_CLUSTER"; echo oops >&2; exit 42',
    )
    assert done.stdout == f"{LOGIN} carol {CLUSTER}\n", done.stderr
    assert done.stderr == "oops\n"
    assert done.returncode == 42
    # stdin reaches the command, and its end is the command's EOF.
    done = tsh(carol.home, "ssh", f"{LOGIN}@{NODENAME}", "wc -c", stdin="x" * 1000)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1000"


def test_tsh_ssh_on_a_terminal_gets_a_pty_and_sees_window_changes(carol: User) -> None:
    child = pexpect.spawn(
        TSH,
        ["ssh", f"{LOGIN}@{NODENAME}"],
        env=tsh_env(carol.home, TERM="xterm"),
        encoding="utf-8",
        dimensions=(24, 80),
        timeout=30,
    )
    try:
        child.expect(r"[#$] ")  # the login shell's prompt
        child.sendline("tty; echo TERM=$TERM; stty size")
        child.expect(r"/dev/pts/\d+")
        child.expect("TERM=xterm")
        child.expect("24 80")
        child.setwinsize(40, 132)  # SIGWINCH to tsh -> window-change to the node
        for _ in range(20):  # the request and the keystrokes travel separately
            child.sendline("stty size")
            if child.expect(["40 132", "24 80"]) == 0:
                break
        else:
            raise AssertionError("the window change never reached the node")
        child.sendline("exit 7")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 7


def test_tsh_scp_copies_20_mib_to_the_node_and_back(carol: User, running: RunningCluster) -> None:
    local = running.tmp / "random.bin"
    local.write_bytes(os.urandom(BIG))
    account = pwd.getpwnam(LOGIN)
    remote = Path(account.pw_dir) / "random.bin"

    up = tsh(carol.home, "scp", "-q", str(local), f"{LOGIN}@{NODENAME}:random.bin")
    assert up.returncode == 0, up.stderr
    # The node wrote it as the login, in the login's home.
    assert remote.stat().st_uid == account.pw_uid
    assert remote.stat().st_size == BIG
    assert sha256_of(remote) == sha256_of(local)

    back = running.tmp / "back.bin"
    down = tsh(carol.home, "scp", "-q", f"{LOGIN}@{NODENAME}:{remote}", str(back))
    assert down.returncode == 0, down.stderr
    assert sha256_of(back) == sha256_of(local)

    # The audit log has each copy's bytes, by file, as the node saw them go by.
    def moved(event: dict[str, Any]) -> list[tuple[str, int, int]]:
        return [
            (f["path"], f["bytes_read"], f["bytes_written"])
            for f in event.get("file_transfer_stats", [])
        ]

    summaries = wait_for(running, "sftp_summary", lambda e: moved(e) == [(str(remote), BIG, 0)])
    assert summaries, events(running, "sftp_summary")
    uploads = [e for e in events(running, "sftp_summary") if moved(e) == [(str(remote), 0, BIG)]]
    assert len(uploads) == 1 and uploads[0]["user"] == "carol"

    # A path the login may not write is refused with the reason.
    denied = tsh(carol.home, "scp", "-q", str(local), f"{LOGIN}@{NODENAME}:/root/nope.bin")
    assert denied.returncode == 1
    assert re.search(r"(?i)permission denied", denied.stderr), denied.stderr
    assert not Path("/root/nope.bin").exists()
