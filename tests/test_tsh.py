"""tsh end to end: a real cluster (auth, proxy, nodes) on loopback, driven through the CLI.

Every test starts its own cluster in its trio loop (:mod:`tests.roles.proxy.cluster`)
and runs ``tsh`` as a subprocess with its own ``TSH_HOME``. The proxy's HTTPS
certificate is self-signed; tsh is told to trust it with ``SSL_CERT_FILE``, the
way an operator would hand it to users (one test checks that without it, or
``--insecure``, tsh refuses). OpenSSH's ``ssh`` is driven with the configuration
``tsh config`` prints, through the same proxy and with the same certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pexpect
import trio

from tests.roles.proxy.cluster import LOGIN, Cluster, ClusterUser, open_cluster, tsh_env
from trioport.sshproto.keys import PrivateKey

SSH = shutil.which("ssh") or "/usr/bin/ssh"
SSH_AGENT = shutil.which("ssh-agent") or "/usr/bin/ssh-agent"
SSH_ADD = shutil.which("ssh-add") or "/usr/bin/ssh-add"
TSH = [sys.executable, "-m", "trioport_cli.tsh"]

DENY_SECRET = {
    "kind": "role",
    "metadata": {"name": "no-secret"},
    "spec": {
        "allow": {"logins": [LOGIN], "node_labels": {"*": "*"}, "rules": []},
        "deny": {"node_labels": {"env": "secret"}},
    },
}


async def tsh(
    cluster: Cluster,
    home: Path,
    *args: str,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    environ = tsh_env(home, SSL_CERT_FILE=str(cluster.https_cert), **(env or {}))
    return await trio.run_process(
        [*TSH, *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=environ,
    )


async def login(cluster: Cluster, home: Path, user: ClusterUser, *extra: str) -> str:
    code = await user.totp.code()
    done = await tsh(
        cluster,
        home,
        "login",
        f"--proxy={cluster.web_addr}",
        f"--user={user.name}",
        *extra,
        stdin=f"{user.password}\n{code}\n".encode(),
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def text(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stdout.decode() + done.stderr.decode()


# --- login, status, logout --------------------------------------------------------------


async def test_login_stores_a_certificate_and_status_shows_it(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        alice = await cluster.add_user("alice", logins=[LOGIN, "deploy"])
        home = tmp_path / "tsh"
        out = await login(cluster, home, alice)
        assert "Logged in as: alice" in out
        assert f"Cluster:      {cluster.name}" in out
        assert "deploy" in out and LOGIN in out
        proxy_dir = home / "keys" / "127.0.0.1"
        key = proxy_dir / "alice"
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert stat.S_IMODE(proxy_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        PrivateKey.from_openssh(key.read_bytes())  # an OpenSSH key file
        cert_line = (proxy_dir / "alice-cert.pub").read_text()
        assert cert_line.startswith("ssh-ed25519-cert-v01@openssh.com ")
        known = (home / "known_hosts").read_text()
        assert known.startswith(f"@cert-authority *.{cluster.name},127.0.0.1,[127.0.0.1]:")
        assert f"clustername={cluster.name}" in known

        status = await tsh(cluster, home, "status", "--format=json")
        doc = json.loads(status.stdout)
        assert doc["user"] == "alice" and doc["cluster"] == cluster.name
        assert sorted(doc["logins"]) == sorted([LOGIN, "deploy"])
        assert doc["roles"] == ["access"] and doc["expired"] is False

        events = await cluster.events("user.login")
        assert any(e.get("user") == "alice" and e.get("success") for e in events)

        out = text(await tsh(cluster, home, "logout"))
        assert "Logged out alice" in out
        assert not key.exists()
        assert "clustername" not in (home / "known_hosts").read_text()
        status = await tsh(cluster, home, "status")
        assert status.returncode == 1 and "Not logged in" in text(status)


async def test_wrong_password_or_code_is_refused_and_repeated_failures_lock(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path) as cluster:
        bob = await cluster.add_user("bob")
        home = tmp_path / "tsh"
        args = ("login", f"--proxy={cluster.web_addr}", "--user=bob")
        wrong_password = await tsh(
            cluster, home, *args, stdin=f"not the password\n{bob.totp.wrong_code()}\n".encode()
        )
        assert wrong_password.returncode == 1
        message = wrong_password.stderr.decode()
        assert "invalid user name, password or second factor code" in message
        assert "locked for 30 minutes" in message
        assert not (home / "keys").exists()
        wrong_code = await tsh(
            cluster, home, *args, stdin=f"{bob.password}\n{bob.totp.wrong_code()}\n".encode()
        )
        assert wrong_code.returncode == 1
        assert "invalid user name, password or second factor code" in text(wrong_code)
        for _ in range(3):
            await tsh(
                cluster, home, *args, stdin=f"nope nope nope\n{bob.totp.wrong_code()}\n".encode()
            )
        # Five failures: now even the right password and code are refused.
        locked = await tsh(
            cluster, home, *args, stdin=f"{bob.password}\n{await bob.totp.code()}\n".encode()
        )
        assert locked.returncode == 1
        assert "tctl users unlock" in text(locked)
        events = await cluster.events("user.login")
        failures = [e for e in events if e.get("user") == "bob" and e.get("success") is False]
        assert len(failures) >= 6


async def test_login_refuses_an_untrusted_https_certificate_unless_insecure(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path) as cluster:
        carol = await cluster.add_user("carol")
        home = tmp_path / "tsh"
        env = tsh_env(home)  # no SSL_CERT_FILE: the self-signed certificate is unknown
        done = await trio.run_process(
            [*TSH, "login", f"--proxy={cluster.web_addr}", "--user=carol"],
            stdin=f"{carol.password}\n{carol.totp.wrong_code()}\n".encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
        assert done.returncode == 1
        assert "not trusted" in text(done) and "--insecure" in text(done)
        done = await trio.run_process(
            [*TSH, "login", f"--proxy={cluster.web_addr}", "--user=carol", "--insecure"],
            stdin=f"{carol.password}\n{await carol.totp.code()}\n".encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
        assert done.returncode == 0, text(done)


# --- ls and ssh -----------------------------------------------------------------------


async def test_ls_and_ssh_through_the_proxy(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_role(DENY_SECRET)
        await cluster.add_node("web1", {"env": "prod", "team": "web"})
        await cluster.add_node("db1", {"env": "prod", "team": "db"})
        await cluster.add_node("vault", {"env": "secret"})
        dave = await cluster.add_user("dave", roles=["no-secret"])
        home = tmp_path / "tsh"
        await login(cluster, home, dave)

        listing = await tsh(cluster, home, "ls")
        assert listing.returncode == 0, text(listing)
        lines = listing.stdout.decode().splitlines()
        assert lines[0].split() == ["Node", "Name", "Address", "Labels"]
        assert [line.split()[0] for line in lines[2:]] == ["db1", "web1"]
        assert "vault" not in listing.stdout.decode()
        names = await tsh(cluster, home, "ls", "team=web", "--format=names")
        assert names.stdout.decode().split() == ["web1"]

        done = await tsh(
            cluster, home, "ssh", "web1", "echo", "hello from", "$((6*7))", ";", "exit 7"
        )
        assert done.stdout == b"hello from 42\n"
        assert done.returncode == 7
        done = await tsh(cluster, home, "ssh", f"{LOGIN}@db1.{cluster.name}", "id -un")
        assert done.returncode == 0 and done.stdout.decode().strip() == LOGIN
        done = await tsh(cluster, home, "ssh", "team=db", "echo", "by label")
        assert done.stdout == b"by label\n"

        # The node decides logins, end to end: one the roles do not give is refused.
        wrong_login = await tsh(cluster, home, "ssh", "-l", "deploy", "web1", "true")
        assert wrong_login.returncode == 255
        assert "node 'web1' refused login 'deploy'" in text(wrong_login)

        denied = await tsh(cluster, home, "ssh", "vault", "true")
        assert denied.returncode == 255
        assert "access to node 'vault' denied: role 'no-secret' denies access" in text(denied)
        missing = await tsh(cluster, home, "ssh", "nosuch", "true")
        assert missing.returncode == 255
        assert "no node 'nosuch'" in text(missing) and "db1, web1" in text(missing)
        rejected = await cluster.events("session.rejected")
        assert any(e.get("user") == "dave" and "vault" in str(e.get("error")) for e in rejected)


# --- OpenSSH through the proxy -----------------------------------------------------------


async def ssh(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [SSH, "-F", str(config), "-o", "BatchMode=yes", *args],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_openssh_through_the_proxy_with_tsh_config(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_role(DENY_SECRET)
        await cluster.add_node("web1", {"env": "prod"})
        await cluster.add_node("vault", {"env": "secret"})
        erin = await cluster.add_user("erin", roles=["no-secret"])
        home = tmp_path / "tsh"
        await login(cluster, home, erin)
        snippet = (await tsh(cluster, home, "config")).stdout.decode()
        assert f"Host *.{cluster.name} !127.0.0.1" in snippet
        assert "-s proxy:%h:%p" in snippet
        config = tmp_path / "ssh_config"
        config.write_text(snippet)

        # ProxyCommand: ssh -p 3023 %r@proxy -s proxy:%h:%p, then ssh to the node inside it.
        done = await ssh(config, f"{LOGIN}@web1.{cluster.name}", "echo via ProxyCommand; exit 3")
        assert done.stdout == b"via ProxyCommand\n", done.stderr.decode()
        assert done.returncode == 3
        # ssh -J: a direct-tcpip channel through the proxy.
        port = cluster.ssh_addr.port
        done = await ssh(
            config, "-J", f"erin@127.0.0.1:{port}", f"{LOGIN}@web1.{cluster.name}", "echo via -J"
        )
        assert done.stdout == b"via -J\n", done.stderr.decode()
        assert done.returncode == 0

        # tsh itself as the ProxyCommand.
        proxy_command = " ".join([*TSH, "proxy", "ssh", "%r@%h:%p"])
        done = await trio.run_process(
            [
                *(SSH, "-F", str(config), "-o", "BatchMode=yes"),
                *("-o", f"ProxyCommand={proxy_command}"),
                *(f"{LOGIN}@web1.{cluster.name}", "echo via tsh proxy ssh"),
            ],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=tsh_env(home),
        )
        assert done.stdout == b"via tsh proxy ssh\n", done.stderr.decode()

        # Refusals carry the proxy's reason, in both forms.
        done = await ssh(config, f"{LOGIN}@vault.{cluster.name}", "true")
        assert done.returncode == 255
        assert "role 'no-secret' denies access to this node" in done.stderr.decode()
        done = await ssh(
            config, "-J", f"erin@127.0.0.1:{port}", f"{LOGIN}@vault.{cluster.name}", "true"
        )
        assert done.returncode == 255
        assert "administratively prohibited" in done.stderr.decode()
        assert "role 'no-secret' denies access to this node" in done.stderr.decode()


async def test_a_proxy_signed_by_another_ca_is_refused(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("web1")
        frank = await cluster.add_user("frank")
        home = tmp_path / "tsh"
        await login(cluster, home, frank)
        snippet = (await tsh(cluster, home, "config")).stdout.decode()
        config = tmp_path / "ssh_config"
        config.write_text(snippet)
        assert (await tsh(cluster, home, "ssh", "web1", "true")).returncode == 0

        # Replace the cluster's host CA with another key: the real proxy no longer
        # proves itself, and both tsh and OpenSSH refuse it before sending anything.
        known = home / "known_hosts"
        impostor = PrivateKey.generate().public.openssh_line()
        fields = known.read_text().split()
        fields[2:4] = impostor.split()[:2]
        known.write_text(" ".join(fields) + "\n")
        done = await tsh(cluster, home, "ssh", "web1", "true")
        assert done.returncode == 255
        assert "is not the proxy of cluster" in text(done)
        assert "not signed by a trusted CA" in text(done) or "CA" in text(done)
        done = await tsh(cluster, home, "ls")
        assert done.returncode == 1 and "is not the proxy of cluster" in text(done)
        done = await ssh(config, f"{LOGIN}@web1.{cluster.name}", "true")
        assert done.returncode == 255
        assert "Host key verification failed" in done.stderr.decode()


# --- terminals and the agent ------------------------------------------------------------


async def test_interactive_shell_on_a_pty_with_window_changes(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("web1")
        gina = await cluster.add_user("gina")
        home = tmp_path / "tsh"
        await login(cluster, home, gina)
        env = tsh_env(home, SSL_CERT_FILE=str(cluster.https_cert), TERM="xterm", PS1="$ ")

        def drive() -> int:
            child = pexpect.spawn(
                TSH[0], [*TSH[1:], "ssh", "web1"], env=env, dimensions=(24, 80), timeout=20
            )
            try:
                child.expect(r"[#$] ")  # the login shell's prompt
                child.sendline("tty; stty size; echo $TERM")
                child.expect(r"/dev/pts/\d+")
                child.expect("24 80")
                child.expect("xterm")
                child.setwinsize(40, 132)  # SIGWINCH to tsh, window-change to the node
                child.sendline("sleep 0.5; stty size")
                child.expect("40 132")
                child.sendline("exit 5")
                child.expect(pexpect.EOF)
            finally:
                child.close()
            return int(child.exitstatus)

        assert await trio.to_thread.run_sync(drive) == 5


async def test_login_prompts_on_a_terminal_and_offers_the_certificate_to_ssh_agent(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path) as cluster:
        await cluster.add_node("web1")
        hank = await cluster.add_user("hank")
        home = tmp_path / "tsh"
        socket_path = tmp_path / "agent.sock"
        agent = await trio.lowlevel.open_process(
            [SSH_AGENT, "-D", "-a", str(socket_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert agent.stdout is not None
            ready = b""
            while b"SSH_AUTH_SOCK" not in ready:  # printed once it listens
                ready += await agent.stdout.receive_some()
            env = tsh_env(
                home, SSL_CERT_FILE=str(cluster.https_cert), SSH_AUTH_SOCK=str(socket_path)
            )
            code = await hank.totp.code()

            def drive() -> tuple[int, str]:
                child = pexpect.spawn(
                    TSH[0],
                    [*TSH[1:], "login", f"--proxy={cluster.web_addr}", "--user=hank"],
                    env=env,
                    timeout=20,
                )
                try:
                    child.expect("Enter password for user hank: ")
                    child.sendline(hank.password)
                    child.expect("Enter your TOTP code: ")
                    child.sendline(code)
                    child.expect(pexpect.EOF)
                    output = child.before.decode()
                finally:
                    child.close()
                return int(child.exitstatus), output

            status, output = await trio.to_thread.run_sync(drive)
            assert status == 0, output
            assert hank.password not in output  # not echoed
            listed = await trio.run_process(
                [SSH_ADD, "-L"],
                capture_stdout=True,
                check=False,
                env={**os.environ, "SSH_AUTH_SOCK": str(socket_path)},
            )
            cert = (home / "keys" / "127.0.0.1" / "hank-cert.pub").read_text().split()[1]
            assert cert in listed.stdout.decode()

            # -A: the node's session reaches this agent (and lists the certificate).
            agent_env = {"SSH_AUTH_SOCK": str(socket_path)}
            done = await tsh(cluster, home, "ssh", "-A", "web1", "ssh-add -L", env=agent_env)
            assert done.returncode == 0, text(done)
            assert cert in done.stdout.decode()
            done = await tsh(cluster, home, "ssh", "web1", "ssh-add -L", env=agent_env)
            assert done.returncode != 0 and cert not in done.stdout.decode()
            out = await tsh(cluster, home, "logout", env={"SSH_AUTH_SOCK": str(socket_path)})
            assert out.returncode == 0
            listed = await trio.run_process(
                [SSH_ADD, "-L"],
                capture_stdout=True,
                check=False,
                env={**os.environ, "SSH_AUTH_SOCK": str(socket_path)},
            )
            assert cert not in listed.stdout.decode()
        finally:
            agent.terminate()
            await agent.wait()


async def test_scp_both_ways_over_sftp(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        # The node service does not offer sftp yet: a stand-in node serves it.
        await cluster.add_standin_node("web1")
        ivan = await cluster.add_user("ivan")
        home = tmp_path / "tsh"
        await login(cluster, home, ivan)
        local = tmp_path / "up"
        (local / "sub").mkdir(parents=True)
        payload = os.urandom(3 * 1024 * 1024 + 17)
        (local / "big.bin").write_bytes(payload)
        (local / "sub" / "note.txt").write_text("hello\n")
        (local / "sub" / "note.txt").chmod(0o640)
        remote_dir = tmp_path / "remote"
        remote_dir.mkdir()

        done = await tsh(cluster, home, "scp", "-r", str(local), f"web1:{remote_dir}")
        assert done.returncode == 0, text(done)
        assert (remote_dir / "up" / "big.bin").read_bytes() == payload
        assert stat.S_IMODE((remote_dir / "up" / "sub" / "note.txt").stat().st_mode) == 0o640

        back = tmp_path / "back.bin"
        done = await tsh(cluster, home, "scp", f"{LOGIN}@web1:{remote_dir}/up/big.bin", str(back))
        assert done.returncode == 0, text(done)
        assert back.read_bytes() == payload

        done = await tsh(cluster, home, "scp", str(local), f"web1:{remote_dir}/x")
        assert done.returncode == 1 and "is a directory (use -r)" in text(done)
        done = await tsh(cluster, home, "scp", f"web1:{remote_dir}/missing", str(back))
        assert done.returncode == 1 and "missing" in text(done)
