"""Refusals a user can act on, each driven through the real ``tsh`` on a real cluster.

The cluster runs in the test's trio loop (:mod:`tests.roles.proxy.cluster`); tsh
is a subprocess. Each test does what a user would, meets a refusal, and checks
that the one line tsh prints says what went wrong and what to do, and, where the
auth service can see the refusal, that it is in the audit log. (An unknown node
and a node a deny rule hides are in ``tests/test_tsh.py``; forwarding the roles
forbid is in ``tests/e2e/test_tsh_forwarding.py``.)
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.cluster import free_ports
from tests.roles.proxy.cluster import LOGIN, Cluster, open_cluster
from tests.test_tsh import login, text, tsh
from trioport.sshproto.certs import Certificate, CertType, sign_certificate
from trioport.sshproto.keys import PrivateKey, public_key_from_line

#: An OS account for the SFTP test, named after this run so parallel runs never share it.
OS_LOGIN = f"tpth{os.getpid()}"

DEV_DEPLOY = {
    "kind": "role",
    "metadata": {"name": "dev-deploy"},
    "spec": {"allow": {"logins": ["deploy"], "node_labels": {"env": "dev"}, "rules": []}},
}


@pytest.fixture
def os_login() -> Iterator[pwd.struct_passwd]:
    """A plain OS account (we run as root): what it may read is what SFTP may read."""
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", OS_LOGIN], check=True)
    try:
        yield pwd.getpwnam(OS_LOGIN)
    finally:
        subprocess.run(["userdel", "-r", OS_LOGIN], capture_output=True, check=False)


def cert_path(home: Path, user: str) -> Path:
    return home / "keys" / "127.0.0.1" / f"{user}-cert.pub"


def resign(home: Path, user: str, *, valid_after: int, valid_before: int) -> None:
    """Replace the profile's certificate with one for the same key, names and rights,
    signed by a CA of our own (another cluster's, as far as the proxy knows)."""
    path = cert_path(home, user)
    cert = public_key_from_line(path.read_text())
    assert isinstance(cert, Certificate)
    forged = sign_certificate(
        PrivateKey.generate(),
        cert.key,
        cert_type=CertType.USER,
        key_id=cert.key_id,
        principals=cert.principals,
        valid_after=valid_after,
        valid_before=valid_before,
        nonce=os.urandom(32),
        extensions=cert.extensions,
    )
    path.write_text(forged.openssh_line(user) + "\n")


async def wait_for_event(cluster: Cluster, name: str, match: Any) -> dict[str, Any]:
    """The first ``name`` audit event ``match`` accepts (services report in the background)."""
    with trio.fail_after(10):
        while True:
            for event in await cluster.events(name):
                if match(event):
                    return event
            await trio.sleep(0.1)


def one_line(done: subprocess.CompletedProcess[bytes]) -> str:
    """stderr, asserted to be exactly one ``error:`` line (no traceback)."""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr.decode()
    return lines[0]


async def test_an_expired_certificate_says_to_log_in_again(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("web1")
        alice = await cluster.add_user("alice")
        home = tmp_path / "tsh"
        # The shortest certificate there is: one minute.
        await login(cluster, home, alice, "--ttl=1")
        status = json.loads((await tsh(cluster, home, "status", "--format=json")).stdout)
        assert 0 < status["valid_until"] - time.time() <= 61
        # A minute later (the same certificate with its window moved into the past):
        now = int(time.time())
        resign(home, "alice", valid_after=now - 120, valid_before=now - 60)
        expected = (
            f"your certificate for {cluster.name} has expired: run tsh login"
            f" --proxy={cluster.web_addr} to get a new one"
        )
        for args, code in (
            (("ls",), 1),
            (("ssh", "web1", "true"), 255),
            (("scp", "web1:/etc/hostname", str(tmp_path / "x")), 1),
        ):
            done = await tsh(cluster, home, *args)
            assert done.returncode == code, text(done)
            assert expected in one_line(done)
        status_text = await tsh(cluster, home, "status")
        assert status_text.returncode == 1 and "[EXPIRED]" in text(status_text)


async def test_a_certificate_from_another_cluster_is_refused_by_the_proxy(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("web1")
        bob = await cluster.add_user("bob")
        home = tmp_path / "tsh"
        await login(cluster, home, bob)
        now = int(time.time())
        resign(home, "bob", valid_after=now - 60, valid_before=now + 3600)
        done = await tsh(cluster, home, "ssh", "web1", "true")
        assert done.returncode == 255
        line = one_line(done)
        assert f"the proxy at {cluster.ssh_addr} refused your certificate" in line
        assert f"cluster '{cluster.name}' did not issue it" in line and "run tsh login" in line
        done = await tsh(cluster, home, "ls")
        assert done.returncode == 1 and "refused your certificate" in one_line(done)
        event = await wait_for_event(
            cluster,
            "auth",
            lambda e: e.get("service") == "proxy" and e.get("success") is False,
        )
        assert event.get("user") in ("bob", LOGIN)


async def test_an_unreachable_proxy_is_one_clear_line(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("web1")
        carol = await cluster.add_user("carol")
        home = tmp_path / "tsh"
        await login(cluster, home, carol)
        (closed,) = free_ports(1)
        profile = home / "127.0.0.1.yaml"
        profile.write_text(
            profile.read_text().replace(
                f"ssh_proxy_addr: {cluster.ssh_addr}", f"ssh_proxy_addr: 127.0.0.1:{closed}"
            )
        )
        done = await tsh(cluster, home, "ssh", "web1", "true")
        assert done.returncode == 255
        assert one_line(done) == (
            f"error: cannot reach the proxy's SSH port at 127.0.0.1:{closed}: Connection refused"
        )
        done = await tsh(cluster, home, "login", f"--proxy=127.0.0.1:{closed}", "--user=carol")
        assert done.returncode == 1
        assert one_line(done) == (
            f"error: cannot reach the proxy at https://127.0.0.1:{closed}: Connection refused"
        )


async def test_a_refused_login_says_which_rule_refused_it(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_role(DEV_DEPLOY)
        await cluster.add_node("web1", {"env": "prod"})
        dave = await cluster.add_user("dave", roles=["access", "dev-deploy"])
        home = tmp_path / "tsh"
        await login(cluster, home, dave)
        logins = json.loads((await tsh(cluster, home, "status", "--format=json")).stdout)
        assert "deploy" in logins["logins"]

        # In the certificate, but only for env=dev nodes: the node says no, end to end.
        done = await tsh(cluster, home, "ssh", "deploy@web1", "true")
        assert done.returncode == 255
        assert one_line(done) == (
            "error: node 'web1' refused login 'deploy': your certificate has it, but no role"
            " of yours allows it on a node with this node's labels (or a role denies it)"
        )
        await wait_for_event(
            cluster,
            "auth",
            lambda e: (
                e.get("user") == "dave"
                and e.get("login") == "deploy"
                and e.get("service") == "node"
                and e.get("success") is False
            ),
        )
        # Not in the certificate at all.
        done = await tsh(cluster, home, "ssh", "-l", "postgres", "web1", "true")
        assert done.returncode == 255
        line = one_line(done)
        assert "node 'web1' refused login 'postgres': it is not among your certificate's" in line
        assert "deploy" in line and LOGIN in line
        await wait_for_event(
            cluster, "auth", lambda e: e.get("user") == "dave" and e.get("login") == "postgres"
        )


async def test_an_unknown_node_lists_the_nodes_she_can_reach(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("web1")
        await cluster.add_node("db1")
        gina = await cluster.add_user("gina")
        home = tmp_path / "tsh"
        await login(cluster, home, gina)
        for args in (("ssh", "web9", "true"), ("scp", "web9:notes.txt", str(tmp_path))):
            done = await tsh(cluster, home, *args)
            assert done.returncode == (255 if args[0] == "ssh" else 1)
            assert one_line(done) == (
                f"error: no node 'web9' in cluster '{cluster.name}'; nodes you can reach: db1, web1"
            )
        await wait_for_event(
            cluster,
            "session.rejected",
            lambda e: e.get("user") == "gina" and "web9" in str(e.get("error")),
        )


async def test_a_node_whose_host_certificate_has_another_name_is_refused(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path) as cluster:
        web1 = await cluster.add_standin_node("web1")
        web2 = await cluster.add_standin_node("web2")
        erin = await cluster.add_user("erin")
        home = tmp_path / "tsh"
        await login(cluster, home, erin)
        assert (await tsh(cluster, home, "ssh", "web2", "true")).returncode == 0
        # web2 now reports web1's address: whoever answers there holds web1's host
        # certificate, which does not name web2. tsh must not log in to it.
        await cluster.heartbeat(web2, addr=str(web1.addr))
        with trio.fail_after(20):  # until the proxy's node cache has the new address
            while True:
                listing = await tsh(cluster, home, "ls", "--format=json")
                addrs = {n["hostname"]: n["addr"] for n in json.loads(listing.stdout)}
                if addrs["web2"] == str(web1.addr):
                    break
        done = await tsh(cluster, home, "ssh", "web2", "echo should not run")
        assert done.returncode == 255 and b"should not run" not in done.stdout
        line = one_line(done)
        assert line.startswith("error: node 'web2' is not trusted: "), line
        assert "web2" in line.removeprefix("error: node 'web2' is not trusted: "), line


@pytest.fixture
def root_only() -> Iterator[Path]:
    """A directory everyone may enter, holding ``secret.txt`` that only root may read."""
    shared = Path(tempfile.mkdtemp(prefix="tsh-refusal-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        secret = shared / "secret.txt"
        secret.write_text("root only\n")
        secret.chmod(0o600)
        yield shared
    finally:
        shutil.rmtree(shared, ignore_errors=True)


async def test_sftp_outside_what_the_login_may_read_names_the_path(
    tmp_path: Path, os_login: pwd.struct_passwd, root_only: Path
) -> None:
    secret = root_only / "secret.txt"
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("web1")
        frank = await cluster.add_user("frank", logins=[os_login.pw_name])
        home = tmp_path / "tsh"
        await login(cluster, home, frank)
        target = tmp_path / "copy.txt"
        done = await tsh(cluster, home, "scp", f"web1:{secret}", str(target))
        assert done.returncode == 1
        assert one_line(done).lower() == f"error: {secret}: permission denied"
        local = tmp_path / "mine.txt"
        local.write_text("mine\n")
        done = await tsh(cluster, home, "scp", str(local), f"web1:{root_only}/")
        assert done.returncode == 1
        assert one_line(done).lower() == f"error: {root_only}/mine.txt: permission denied"
        # What the login may write still copies.
        done = await tsh(cluster, home, "scp", str(local), "web1:")
        assert done.returncode == 0, text(done)
        assert (Path(os_login.pw_dir) / "mine.txt").read_text() == "mine\n"
        await wait_for_event(
            cluster,
            "sftp",
            lambda e: (
                e.get("user") == "frank"
                and e.get("success") is False
                and str(secret) in json.dumps(e)
            ),
        )
