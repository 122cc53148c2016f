"""SIGTERM on a proxy-only ``trioport run``: it drains, then disconnects with a reason.

Two real processes on loopback ports: ``trioport run --roles=auth,node`` (the
cluster) and ``trioport run --roles=proxy`` with
``connection_limits.shutdown_timeout: 3s``. Alice logs in through the proxy's
HTTPS port and keeps a shell-like session (``cat``) open on the node through its
SSH port. Then the proxy gets SIGTERM:

- its ports close: a new connection to either is refused;
- the running session still echoes what she types;
- once the timeout passes she is disconnected with "the proxy is shutting down";
- the process exits 0, and the cluster behind it is untouched.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import trio

from tests.e2e.cluster import Process, free_ports, start
from tests.roles.proxy.cluster import LOGIN, PASSWORD, Totp
from trioport.authclient import ClientIdentity, connect_auth
from trioport.config import Address
from trioport.errors import ConnectionClosedError
from trioport.roles.proxy import client as pc
from trioport.ssh import KeySigner
from trioport.sshproto import events as ev
from trioport.sshproto.keys import PrivateKey, public_key_from_line
from trioport.tls import client_context

CLUSTER = "drain.test"
TOKEN = "proxy-join-token-0123456789abcdef"
SHUTDOWN = 3.0
#: Bound for the test body; it takes far less.
TIMEOUT = 90


def _configs(tmp_path: Path) -> tuple[Path, Path, dict[str, int]]:
    auth, node, ssh, web = free_ports(4)
    ports = {"auth": auth, "node": node, "ssh": ssh, "web": web}
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        f"""version: v1
teleport:
  nodename: drain-node
  data_dir: {tmp_path / "cluster"}
auth_service:
  listen_addr: 127.0.0.1:{auth}
  cluster_name: {CLUSTER}
  tokens: ["proxy:{TOKEN}"]
ssh_service:
  listen_addr: 127.0.0.1:{node}
proxy_service:
  enabled: false
"""
    )
    proxy = tmp_path / "proxy.yaml"
    proxy.write_text(
        f"""version: v1
teleport:
  nodename: drain-proxy
  data_dir: {tmp_path / "proxy"}
  auth_token: {TOKEN}
  auth_servers: ["127.0.0.1:{auth}"]
  connection_limits:
    shutdown_timeout: {SHUTDOWN:g}s
auth_service:
  enabled: false
ssh_service:
  enabled: false
proxy_service:
  listen_addr: 127.0.0.1:{ssh}
  web_listen_addr: 127.0.0.1:{web}
"""
    )
    return cluster, proxy, ports


async def _invite(auth_addr: Address, admin: ClientIdentity, name: str) -> Totp:
    async with connect_auth(auth_addr, admin) as client:
        invite = await client.add_user(name, logins=[LOGIN])
        enrolment = await client.start_enrolment(invite["token"])
        totp = Totp(enrolment["secret"])
        await client.complete_invite(invite["token"], PASSWORD, await totp.code())
        with trio.fail_after(30):
            while not any(n["online"] for n in await client.list_nodes()):  # noqa: ASYNC110
                await trio.sleep(0.1)
    return totp


async def _refused(port: int) -> bool:
    """True once nothing accepts on ``port`` any more."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def _echo(chan: object, text: bytes) -> bytes:
    await chan.send_all(text)  # type: ignore[attr-defined]
    got = b""
    while len(got) < len(text):
        got += await chan.receive_some()  # type: ignore[attr-defined]
    return got


async def test_sigterm_drains_then_disconnects_with_a_reason(tmp_path: Path) -> None:
    cluster_yaml, proxy_yaml, ports = _configs(tmp_path)
    cluster = start(cluster_yaml, tmp_path / "cluster.log")
    proxy: Process | None = None
    try:
        proxy = start(proxy_yaml, tmp_path / "proxy.log")
        with trio.fail_after(TIMEOUT):
            auth_addr = Address("127.0.0.1", ports["auth"])
            admin = ClientIdentity.load(tmp_path / "cluster" / "admin")
            totp = await _invite(auth_addr, admin, "alice")
            key = PrivateKey.generate()
            web = Address("127.0.0.1", ports["web"])
            ctx = client_context(cafile=tmp_path / "proxy" / "proxy" / "https" / "cert.pem")
            code = await totp.code()
            reply = await trio.to_thread.run_sync(
                lambda: pc.login(
                    web, ctx, user="alice", password=PASSWORD, totp_code=code, public_key=key.public
                )
            )
            signers = [KeySigner(key, certificate=public_key_from_line(reply["cert"]).blob)]
            host_cas = [public_key_from_line(line) for line in reply["host_ca"]]
            async with pc.connect_proxy(
                Address("127.0.0.1", ports["ssh"]),
                login=LOGIN,
                signers=signers,
                host_cas=host_cas,
                cluster=CLUSTER,
            ) as outer:
                async with pc.connect_node(
                    outer,
                    "drain-node",
                    ports["node"],
                    login=LOGIN,
                    signers=signers,
                    host_cas=host_cas,
                    cluster=CLUSTER,
                ) as node:
                    chan = await node.open_session()
                    assert await chan.request(ev.Exec(command=b"cat"))
                    assert await _echo(chan, b"before\n") == b"before\n"

                    proxy.popen.send_signal(signal.SIGTERM)
                    # Both ports close; the session carries on meanwhile.
                    for port in (ports["ssh"], ports["web"]):
                        while not await _refused(port):  # noqa: ASYNC110 - another process
                            await trio.sleep(0.05)
                    assert await _echo(chan, b"during\n") == b"during\n"
                    assert proxy.popen.poll() is None  # still draining
                    # After the timeout the proxy disconnects her, saying why.
                    await outer.wait_closed()
            error = outer.error
            assert isinstance(error, ConnectionClosedError), error
            assert error.description == "the proxy is shutting down"
            status = await trio.to_thread.run_sync(lambda: proxy.popen.wait(30))
            assert status == 0, proxy.stderr
            assert "stopping" in proxy.stderr
            # The cluster behind it did not notice.
            assert cluster.popen.poll() is None
            async with connect_auth(auth_addr, admin) as client:
                assert (await client.whoami())["name"]
    finally:
        if proxy is not None:
            try:
                proxy.stop(signal.SIGKILL, timeout=10)
            except subprocess.TimeoutExpired:
                pass
        assert cluster.stop() == 0, cluster.stderr
