"""The quick start, end to end: exactly what ``docs/quickstart.md`` tells a user to type.

One ``trioport run --config FILE`` (auth, node and proxy in one process, free
loopback ports, a temporary data directory) serves the whole module. An
administrator invites alice with ``tctl``; she finishes the invite with ``tsh
invite`` on a terminal (pexpect: the password twice, the TOTP secret read off the
screen, a wrong code and then a right one), logs in with ``tsh login``, lists the
node, runs a command on it with ``tsh ssh`` and with OpenSSH's ``ssh`` configured by
``tsh config``. ``tctl`` sees the node and the cluster. Stopping with SIGTERM exits
0 without a traceback, and a restart on the same data directory is the same
cluster. A broken configuration file or flag stops ``trioport run`` with one line.

alice's OS login is a test account made with ``useradd`` (we run as root) and
removed afterwards.
"""

from __future__ import annotations

import io
import os
import pwd
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from .cluster import (
    CLUSTER,
    NODENAME,
    PASSWORD,
    SSH,
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

#: The OS account alice logs in as on the node: one per run, so that two runs side by
#: side never delete each other's.
LOGIN = f"tpe2e{os.getpid()}"
TSH = program("tsh")
TCTL = program("tctl")
TRIOPORT = program("trioport")


def _userdel(name: str) -> None:
    subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def os_login() -> Iterator[str]:
    _userdel(LOGIN)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", LOGIN], check=True)
    try:
        yield pwd.getpwnam(LOGIN).pw_name
    finally:
        _userdel(LOGIN)


@dataclass
class Cluster:
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("e2e")
    ports = Ports(*free_ports(4))
    config = write_config(tmp / "trioport.yaml", tmp / "data", ports)
    process = start(config, tmp / "trioport.log")
    try:
        yield Cluster(config, tmp / "data", ports, process, tmp)
    finally:
        status = process.stop()
    assert status == 0, process.stderr
    assert "Traceback" not in process.stderr


def tsh(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run([TSH, *args], env=base_env(TSH_HOME=str(home)), stdin=stdin)


@dataclass
class Invited:
    name: str
    url: str
    totp: Totp
    transcript: str


def finish_invite_on_a_terminal(url: str, home: Path) -> Invited:
    """``tsh invite URL --insecure`` as a person types it, with two mistakes on the way."""
    child = pexpect.spawn(
        TSH,
        ["invite", url, "--insecure"],
        env=base_env(TSH_HOME=str(home)),
        encoding="utf-8",
        timeout=30,
    )
    seen = io.StringIO()
    child.logfile_read = seen
    try:
        child.expect("New password")
        child.sendline(PASSWORD)
        child.expect("Repeat the new password")
        child.sendline(PASSWORD + "!")  # a typo: asked again
        child.expect("passwords do not match")
        child.expect("New password")
        child.sendline(PASSWORD)
        child.expect("Repeat the new password")
        child.sendline(PASSWORD)
        child.expect(r"URI: +(otpauth://totp/\S+)")
        uri = child.match.group(1)
        child.expect(r"Secret: +([A-Z2-7]+)")
        totp = Totp(child.match.group(1))
        assert f"secret={totp.totp.secret}" in uri
        child.expect("code from your authenticator app")
        child.sendline(totp.wrong_code())
        child.expect("does not match")
        child.expect("code from your authenticator app")
        child.sendline(totp.code())
        child.expect(pexpect.EOF)
    finally:
        child.close()
    transcript = seen.getvalue()
    assert child.exitstatus == 0, transcript
    return Invited("alice", url, totp, transcript)


@pytest.fixture(scope="module")
def alice(cluster: Cluster, os_login: str) -> Iterator[tuple[Invited, Path, str]]:
    """alice, invited, set up and logged in: her tsh home and what ``tsh login`` printed."""
    added = cluster.tctl("users", "add", "alice", f"--logins={os_login}")
    assert added.returncode == 0, added.stderr
    url = invite_url(added.stdout)
    assert url.startswith(f"https://{cluster.web}/web/invite/")
    home = cluster.tmp / "alice-tsh"
    invited = finish_invite_on_a_terminal(url, home)
    done = tsh(
        home,
        "login",
        f"--proxy={cluster.web}",
        "--user=alice",
        "--insecure",
        "--password-stdin",
        stdin=f"{PASSWORD}\n{invited.totp.code()}\n",
    )
    assert done.returncode == 0, done.stderr
    yield invited, home, done.stdout


# --- the run command ---------------------------------------------------------------------


def test_trioport_run_announces_every_address_and_what_to_type_next(cluster: Cluster) -> None:
    text = cluster.process.announcement
    p = cluster.ports
    assert f"cluster {CLUSTER!r} is running" in text
    assert f"auth  127.0.0.1:{p.auth}" in text
    assert f"node  127.0.0.1:{p.node}" in text
    assert f"proxy 127.0.0.1:{p.web} (HTTPS), 127.0.0.1:{p.proxy_ssh} (SSH)" in text
    assert f"state in {cluster.data_dir}" in text
    assert "users add alice --logins=root" in text
    assert f"tsh login --proxy=127.0.0.1:{p.web} --user=alice --insecure" in text
    assert f"tsh ssh root@{NODENAME}" in text
    token = cluster.data_dir / "auth" / "local-join-token"
    assert token.stat().st_mode & 0o777 == 0o600


def test_the_announced_tctl_line_reaches_this_cluster(cluster: Cluster) -> None:
    match = re.search(r"^ +(tctl --\S+) users add", cluster.process.announcement, re.M)
    assert match, cluster.process.announcement
    done = run([*match.group(1).replace("tctl", TCTL, 1).split(), "status"])
    assert done.returncode == 0, done.stderr
    assert f"Cluster:      {CLUSTER}" in done.stdout


# --- invite, login, ls, ssh ------------------------------------------------------------------


def test_an_invited_user_sets_a_password_and_totp_with_tsh_invite_and_logs_in(
    alice: tuple[Invited, Path, str], cluster: Cluster
) -> None:
    invited, home, login_output = alice
    assert "Setting up user 'alice' (an invite)" in invited.transcript
    assert f"tsh login --proxy={cluster.web} --user=alice --insecure" in invited.transcript
    assert "Logged in as: alice" in login_output
    assert f"Cluster:      {CLUSTER}" in login_output
    assert f"Logins:       {LOGIN}" in login_output
    status = tsh(home, "status")
    assert status.returncode == 0, status.stderr
    assert "Logged in as: alice" in status.stdout
    # The link is used up: a second attempt is refused with one line.
    again = tsh(
        home, "invite", invited.url, "--insecure", "--password-stdin", stdin=f"{PASSWORD}\n"
    )
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0
    assert "expired or was already used" in again.stderr


def test_tsh_ls_shows_the_node(alice: tuple[Invited, Path, str]) -> None:
    _invited, home, _ = alice
    done = tsh(home, "ls")
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].split()[:2] == ["Node", "Name"]
    assert any(row.split()[0] == NODENAME and "env=e2e" in row for row in rows[2:]), done.stdout


def test_tsh_ssh_runs_a_command_and_returns_its_exit_status(
    alice: tuple[Invited, Path, str],
) -> None:
    _invited, home, _ = alice
    done = tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "echo hi; exit 3")
    assert done.stdout == "hi\n", done.stderr
    assert done.returncode == 3


def test_openssh_reaches_the_node_through_the_proxy_with_tsh_config(
    alice: tuple[Invited, Path, str], cluster: Cluster
) -> None:
    _invited, home, _ = alice
    snippet = tsh(home, "config")
    assert snippet.returncode == 0, snippet.stderr
    config = cluster.tmp / "ssh_config"
    config.write_text(snippet.stdout)
    target = f"{LOGIN}@{NODENAME}.{CLUSTER}"
    done = run([SSH, "-F", str(config), "-o", "BatchMode=yes", target, "whoami; exit 3"])
    assert done.stdout == f"{LOGIN}\n", done.stderr
    assert done.returncode == 3


def finish_invite_from_a_script(url: str, home: Path) -> Totp:
    """``tsh invite URL --insecure --password-stdin``: the code is computed from its output."""
    child = subprocess.Popen(
        [TSH, "invite", url, "--insecure", "--password-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(TSH_HOME=str(home)),
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(f"{PASSWORD}\n")
    child.stdin.flush()
    secret = None
    while secret is None:
        line = child.stdout.readline()
        assert line, child.communicate(timeout=30)
        if line.strip().startswith("Secret:"):
            secret = line.split()[-1]
    totp = Totp(secret)
    out, err = child.communicate(f"{totp.code()}\n", timeout=30)
    assert child.returncode == 0, err
    assert "is ready" in out
    return totp


@pytest.fixture(scope="module")
def bob_via_localhost(cluster: Cluster, os_login: str) -> Path:
    """bob, logged in with ``--proxy=localhost:PORT``; the OpenSSH configuration tsh wrote."""
    added = cluster.tctl("users", "add", "bob", f"--logins={os_login}")
    assert added.returncode == 0, added.stderr
    home = cluster.tmp / "bob-tsh"
    totp = finish_invite_from_a_script(invite_url(added.stdout), home)
    web = f"localhost:{cluster.ports.web}"
    done = tsh(
        home,
        *("login", f"--proxy={web}", "--user=bob", "--insecure", "--password-stdin"),
        stdin=f"{PASSWORD}\n{totp.code()}\n",
    )
    assert done.returncode == 0, done.stderr
    # tsh itself is fine with the name localhost ...
    done = tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "echo hi")
    assert done.stdout == "hi\n", done.stderr
    config = cluster.tmp / "bob_ssh_config"
    config.write_text(tsh(home, "config").stdout)
    assert "%r@localhost -s proxy:%h:%p" in config.read_text()
    return config


def test_openssh_works_after_logging_in_through_localhost(bob_via_localhost: Path) -> None:
    target = f"{LOGIN}@{NODENAME}.{CLUSTER}"
    done = run([SSH, "-F", str(bob_via_localhost), "-o", "BatchMode=yes", target, "whoami"])
    assert "name is not a listed principal" not in done.stderr
    assert done.stdout == f"{LOGIN}\n", done.stderr


# --- tctl ------------------------------------------------------------------------------------


def test_tctl_lists_the_node_and_shows_the_cluster(cluster: Cluster) -> None:
    nodes = cluster.tctl("nodes", "ls")
    assert nodes.returncode == 0, nodes.stderr
    row = next(r for r in nodes.stdout.splitlines() if r.startswith(NODENAME))
    assert f"127.0.0.1:{cluster.ports.node}" in row
    assert row.split()[-1] == "online"
    status = cluster.tctl("status")
    assert status.returncode == 0, status.stderr
    assert f"Cluster:      {CLUSTER}" in status.stdout
    assert f"Auth server:  127.0.0.1:{cluster.ports.auth}" in status.stdout
    assert re.search(r"^User CA: +SHA256:\S+$", status.stdout, re.M)
    assert "Nodes:        1 (1 online)" in status.stdout


# --- stopping and starting again -------------------------------------------------------------


def _authorities(status: str) -> list[str]:
    return re.findall(r"^(?:User|Host) CA: +(\S+)$", status, re.M)


def test_sigterm_or_ctrl_c_stops_cleanly_and_a_restart_is_the_same_cluster(tmp_path: Path) -> None:
    ports = Ports(*free_ports(4))
    config = write_config(tmp_path / "trioport.yaml", tmp_path / "data", ports)
    log = tmp_path / "trioport.log"
    tctl = [TCTL, "--config", str(config), "status"]

    first = start(config, log)
    try:
        before = run(tctl)
    finally:
        assert first.stop() == 0, first.stderr
    assert before.returncode == 0, before.stderr
    assert len(_authorities(before.stdout)) == 2, before.stdout
    assert "SIGTERM: stopping" in first.stderr
    assert "Traceback" not in first.stderr

    second = start(config, log)
    try:
        after = run(tctl)
    finally:
        assert second.stop(signal.SIGINT) == 0, second.stderr  # Ctrl-C
    assert after.returncode == 0, after.stderr
    assert _authorities(after.stdout) == _authorities(before.stdout)
    # The node came back as itself, not as a second node.
    assert "Nodes:        1 (1 online)" in after.stdout
    assert "SIGINT: stopping" in second.stderr
    assert "Traceback" not in second.stderr


# --- refusals --------------------------------------------------------------------------------


def test_a_broken_config_file_stops_trioport_run_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(
        f"version: v1\nteleport:\n  data_dir: {tmp_path / 'data'}\n"
        "ssh_service:\n  lables:\n    env: prod\n"
    )
    done = run([TRIOPORT, "run", "--config", str(config)])
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: {config}:5: ssh_service.lables: unknown key")
    assert done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "data").exists()


def test_unknown_roles_stop_trioport_run_with_one_line(tmp_path: Path) -> None:
    ports = Ports(*free_ports(4))
    config = write_config(tmp_path / "trioport.yaml", tmp_path / "data", ports)
    done = run([TRIOPORT, "run", "--config", str(config), "--roles=bogus"])
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: --roles: ")
    assert "bogus" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_tsh_invite_refuses_a_link_that_is_not_an_invite_with_one_line(tmp_path: Path) -> None:
    for url, message in (
        ("http://127.0.0.1:3080/web/invite/abcdef0123456789", "https://PROXY:3080"),
        ("https://127.0.0.1:3080/web/login", "/web/invite/TOKEN"),
    ):
        done = tsh(tmp_path, "invite", url, "--password-stdin")
        assert done.returncode == 1
        assert done.stderr.startswith("error: URL: ")
        assert message in done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
