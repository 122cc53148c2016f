"""tctl end to end: a real auth service on loopback, tctl's main() in a worker thread.

The auth service runs in the test's trio loop (``serve`` on port 0, SQLite under a
temporary data directory). tctl runs as it does from a shell, with its own
``trio.run`` in a worker thread, reading the configuration file and the admin
identity; one test runs it as a separate process. Every subcommand is used, and
every error a user can run into is checked for its one-line message and exit code.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import yaml
from trioport_cli.tctl import main

from trioport.authclient import ClientIdentity, connect_auth, join_cluster
from trioport.config import loads_config
from trioport.resources import Metadata, Node, NodeSpec, from_yaml
from trioport.roles.auth import service
from trioport.sshproto.keys import PrivateKey

SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


@attrs.define
class Cluster:
    config_path: Path
    data_dir: Path
    addr: str
    capsys: pytest.CaptureFixture[str]

    async def tctl(self, *args: str, auth_server: bool = True) -> Result:
        """Run ``tctl -c CONFIG [--auth-server ADDR] ARGS`` and collect what it printed."""
        argv = ["-c", str(self.config_path)]
        if auth_server:
            argv += ["--auth-server", self.addr]
        return await run_tctl(self.capsys, [*argv, *args])


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


async def run_tctl(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Result:
    capsys.readouterr()
    code = await trio.to_thread.run_sync(_run, argv)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CONFIG = """\
teleport:
  nodename: auth1
  data_dir: {data_dir}
auth_service:
  listen_addr: 127.0.0.1:0
  cluster_name: example.test
proxy_service:
  public_addr: proxy.example.test
"""


@pytest.fixture
async def cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Cluster]:
    data_dir = tmp_path / "data"
    config_path = tmp_path / "trioport.yaml"
    config_path.write_text(CONFIG.format(data_dir=data_dir))
    config = loads_config(config_path.read_text(), source=str(config_path))
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(
            lambda task_status: service.serve(config, task_status=task_status, bcrypt_cost=4)
        )
        host, port = addrs[0]
        yield Cluster(config_path, data_dir, f"{host}:{port}", capsys)
        nursery.cancel_scope.cancel()


async def test_status(cluster: Cluster) -> None:
    result = await cluster.tctl("status")
    assert result.code == 0, result.err
    lines = dict(line.split(":", 1) for line in result.out.splitlines())
    assert lines["Cluster"].strip() == "example.test"
    assert lines["User CA"].strip().startswith("SHA256:")
    assert lines["CA pin"].strip().startswith("sha256:")
    assert lines["Roles"].strip() == "3"
    result = await cluster.tctl("status", "--format=json")
    data = json.loads(result.out)
    assert data["counts"]["users"] == 0
    assert data["auth_server"] == cluster.addr


async def test_users_add_ls_reset_rm(cluster: Cluster) -> None:
    result = await cluster.tctl("users", "add", "alice", "--logins=root,alice")
    assert result.code == 0, result.err
    assert 'User "alice" has been created' in result.out
    (url,) = [line for line in result.out.splitlines() if line.startswith("https://")]
    assert url.startswith("https://proxy.example.test:3080/web/invite/")
    assert len(url.rsplit("/", 1)[1]) == 64
    # The older form: logins as a second argument.
    result = await cluster.tctl("users", "add", "bob", "bob,admin", "--roles=access,auditor")
    assert result.code == 0, result.err
    result = await cluster.tctl("users", "ls")
    rows = [line.split() for line in result.out.splitlines()[2:]]
    assert rows == [
        ["alice", "access", "root,alice", "invited"],
        ["bob", "access,auditor", "bob,admin", "invited"],
    ]
    users = json.loads((await cluster.tctl("users", "ls", "--format=json")).out)
    assert [u["metadata"]["name"] for u in users] == ["alice", "bob"]
    assert all("local_auth" not in u["spec"] for u in users)
    result = await cluster.tctl("users", "reset", "alice", "--format=json")
    reset = json.loads(result.out)
    assert reset["url"].endswith(reset["token"]) and reset["token"] not in url
    assert (await cluster.tctl("users", "unlock", "alice")).code == 0
    result = await cluster.tctl("users", "rm", "bob")
    assert (result.code, result.out) == (0, 'User "bob" has been deleted\n')
    result = await cluster.tctl("users", "rm", "bob")
    assert (result.code, result.err) == (1, "error: user 'bob' not found\n")
    result = await cluster.tctl("users", "add", "carol", "--roles=nope")
    assert (result.code, result.err) == (1, "error: role 'nope' does not exist\n")
    result = await cluster.tctl("users", "add", "dan", "dan", "--logins=dan")
    assert result.code == 1
    assert "give the logins once" in result.err


async def test_tokens_and_nodes(cluster: Cluster) -> None:
    result = await cluster.tctl("tokens", "add", "--type=node", "--ttl=5m")
    assert result.code == 0, result.err
    token = result.out.splitlines()[0].removeprefix("The invite token: ")
    assert len(token) == 32
    assert "This token will expire in 5m." in result.out
    assert f"--token={token} --auth-server={cluster.addr}" in result.out
    listed = await cluster.tctl("tokens", "ls")
    assert token not in listed.out and token[-8:] in listed.out and "node" in listed.out
    assert (await cluster.tctl("tokens", "rm", token)).code == 0
    assert token[-8:] not in (await cluster.tctl("tokens", "ls")).out
    result = await cluster.tctl("tokens", "add", "--ttl=1h")
    assert result.code == 1
    assert "at most 900 seconds and can only be shortened" in result.err
    result = await cluster.tctl("tokens", "add", "--ttl=soon")
    assert result.err.startswith("error: --ttl: expected a duration")

    # nodes add makes a node token; a node joins with it and reports in.
    token = json.loads((await cluster.tctl("nodes", "add", "--format=json")).out)["token"]
    key = PrivateKey.generate()
    joined = await join_cluster(cluster.addr, token=token, key=key, node_name="web1")
    async with connect_auth(cluster.addr, joined.identity(key)) as node:
        await node.heartbeat(
            Node(
                metadata=Metadata(name=joined.host_id, labels={"env": "prod"}),
                spec=NodeSpec(hostname="web1", addr="10.0.0.5:3022"),
            )
        )
    result = await cluster.tctl("nodes", "ls")
    assert result.out.splitlines()[2].split() == [
        "web1",
        joined.host_id,
        "10.0.0.5:3022",
        "env=prod",
        "online",
    ]
    assert json.loads((await cluster.tctl("nodes", "ls", "--format=json")).out)[0]["online"]
    assert (await cluster.tctl("nodes", "rm", joined.host_id)).code == 0
    assert len((await cluster.tctl("nodes", "ls")).out.splitlines()) == 2


ROLE_AND_USER = """\
kind: role
version: v1
metadata:
  name: dev
spec:
  allow:
    logins: [dev]
    node_labels:
      env: [dev, staging]
---
kind: user
version: v1
metadata:
  name: erin
spec:
  roles: [dev]
  traits:
    logins: [erin]
"""


async def test_create_get_rm(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "dev.yaml"
    path.write_text(ROLE_AND_USER)
    result = await cluster.tctl("create", str(path))
    assert result.code == 0, result.err
    assert "role 'dev' has been created" in result.out
    assert "user 'erin' has been created; invite link: https://proxy.example.test:3080/" in (
        result.out
    )
    result = await cluster.tctl("create", str(path))
    assert (result.code, result.err) == (
        1,
        "error: role 'dev' already exists; use -f to overwrite it\n",
    )
    result = await cluster.tctl("create", "-f", str(path))
    assert result.out.splitlines() == [
        "role 'dev' has been updated",
        "user 'erin' has been updated",
    ]

    got = await cluster.tctl("get", "role/dev")
    role = from_yaml(got.out)
    assert role.spec.allow.node_labels == {"env": ["dev", "staging"]}
    roles = json.loads((await cluster.tctl("get", "roles", "--format=json")).out)
    assert [r["metadata"]["name"] for r in roles] == ["access", "auditor", "dev", "editor"]
    text = (await cluster.tctl("get", "users", "--format=text")).out
    assert text.splitlines()[2].split() == ["erin", "dev", "erin", "invited"]
    cas = list(yaml.safe_load_all((await cluster.tctl("get", "cert_authority")).out))
    assert [(c["spec"]["type"], "private_keys" in c["spec"]) for c in cas] == [
        ("user", False),
        ("host", False),
    ]
    assert len(from_yaml((await cluster.tctl("get", "ca/host")).out).spec.public_keys) == 1

    assert (await cluster.tctl("rm", "user/erin")).out == "user 'erin' has been deleted\n"
    assert (await cluster.tctl("rm", "role/dev")).code == 0
    result = await cluster.tctl("rm", "role/dev")
    assert (result.code, result.err) == (1, "error: role 'dev' not found\n")
    result = await cluster.tctl("rm", "role")
    assert (result.code, result.err) == (1, "error: name the resource: role/NAME\n")
    result = await cluster.tctl("get", "gadgets")
    assert result.err.startswith("error: unknown resource kind 'gadgets'")


async def test_create_refuses_an_invalid_resource(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(ROLE_AND_USER.replace("logins: [dev]", "logins: [dev, 'not a login']"))
    result = await cluster.tctl("create", str(path))
    assert (result.code, result.err) == (
        1,
        f"error: {path}:7: spec.allow.logins[1]: not a valid login name\n",
    )
    path.write_text("kind: role\nversion: v1\nmetadata: {name: x}\nspec: {alow: {}}\n")
    result = await cluster.tctl("create", str(path))
    assert result.code == 1
    assert f"error: {path}:4: spec.alow: unknown key" in result.err
    result = await cluster.tctl("create", str(tmp_path / "missing.yaml"))
    assert (
        result.err
        == f"error: {tmp_path / 'missing.yaml'}: cannot read the file: No such file or directory\n"
    )
    assert (await cluster.tctl("get", "roles", "--format=text")).out.count("\n") == 5


async def test_auth_export(cluster: Cluster, tmp_path: Path) -> None:
    user_lines = (await cluster.tctl("auth", "export", "--type=user")).out.splitlines()
    host_lines = (await cluster.tctl("auth", "export", "--type=host")).out.splitlines()
    both = (await cluster.tctl("auth", "export")).out.splitlines()
    assert both == user_lines + host_lines
    (user_line,) = user_lines
    (host_line,) = host_lines
    assert user_line.startswith("cert-authority ssh-ed25519 ")
    assert user_line.endswith(" type=user&clustername=example.test")
    assert host_line.startswith("@cert-authority * ssh-ed25519 ")
    status = json.loads((await cluster.tctl("status", "--format=json")).out)
    # OpenSSH reads both: the authorized_keys line and the known_hosts CA line.
    (tmp_path / "authorized_keys").write_text(user_line + "\n")
    (tmp_path / "known_hosts").write_text(host_line + "\n")
    listed = await trio.run_process(
        [SSH_KEYGEN, "-l", "-f", str(tmp_path / "authorized_keys")], capture_stdout=True
    )
    assert listed.stdout.split()[1].decode() == status["authorities"]["user"][0]
    found = await trio.run_process(
        [SSH_KEYGEN, "-F", "web1.example.test", "-f", str(tmp_path / "known_hosts")],
        capture_stdout=True,
    )
    assert b"found: line 1 CA" in found.stdout


async def test_errors_name_what_is_wrong(cluster: Cluster, tmp_path: Path) -> None:
    # The auth service is not running where tctl looks.
    port = free_port()
    result = await run_tctl(
        cluster.capsys,
        ["-c", str(cluster.config_path), "--auth-server", f"127.0.0.1:{port}", "status"],
    )
    assert (result.code, result.out) == (1, "")
    assert result.err == (
        f"error: cannot reach the auth service at 127.0.0.1:{port}: Connection refused\n"
    )
    # The configuration file is broken.
    broken = tmp_path / "broken.yaml"
    broken.write_text("teleport:\n  data_dir: /tmp/x\n  lables: {}\n")
    result = await run_tctl(cluster.capsys, ["-c", str(broken), "status"])
    assert result.code == 1
    assert result.err.startswith(f"error: {broken}:3: teleport.lables: unknown key")
    result = await run_tctl(cluster.capsys, ["-c", str(tmp_path / "nope.yaml"), "status"])
    assert result.err.startswith(f"error: {tmp_path / 'nope.yaml'}: cannot read the file")
    # No admin identity in the data directory.
    result = await run_tctl(
        cluster.capsys,
        [
            *("-c", str(cluster.config_path), "-d", str(tmp_path / "empty")),
            *("--auth-server", cluster.addr, "status"),
        ],
    )
    assert result.code == 1
    assert result.err.startswith(
        f"error: --data-dir: no administrator identity in {tmp_path / 'empty' / 'admin'}"
    )
    # A bad --auth-server.
    result = await cluster.tctl("status", auth_server=False)
    assert result.code == 1
    assert result.err.startswith("error: --auth-server: auth_service.listen_addr uses port 0")
    result = await run_tctl(cluster.capsys, ["--auth-server", "http://x", "status"])
    assert result.err == "error: --auth-server: expected host:port, not a URL\n"
    # Options work after the command too.
    result = await run_tctl(
        cluster.capsys, ["status", "-c", str(cluster.config_path), "--auth-server", cluster.addr]
    )
    assert result.code == 0, result.err


async def test_a_mismatched_admin_identity_is_a_clear_error(cluster: Cluster) -> None:
    admin_dir = cluster.data_dir / "admin"
    identity = ClientIdentity.load(admin_dir)
    attrs.evolve(identity, key=PrivateKey.generate()).save(admin_dir)
    result = await cluster.tctl("status")
    assert (result.code, result.err) == (
        1,
        f"error: {admin_dir}/key-cert.pub is not a certificate for {admin_dir}/key\n",
    )


async def test_tctl_as_a_program(cluster: Cluster) -> None:
    base = [sys.executable, "-m", "trioport_cli.tctl", "-c", str(cluster.config_path)]
    done = await trio.run_process(
        [*base, "--auth-server", cluster.addr, "status", "--format=json"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cluster_name"] == "example.test"
    done = await trio.run_process(
        [*base, "--auth-server", f"127.0.0.1:{free_port()}", "users", "ls"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode().count("\n") == 1
    assert done.stderr.startswith(b"error: cannot reach the auth service at 127.0.0.1:")
