"""The proxy line, attacked: nobody but the cluster's proxy can tell a node who the client is.

A real cluster in this trio loop (auth, a proxy, a node with the node service).
The node must accept a line only from a certificate of the cluster's host CA with
the ``proxy`` service role, valid, for this node, fresh, unused and signed; every
other line gets the SSH identification, then an SSH DISCONNECT with the reason,
and the connection is closed before SSH starts. A plain SSH client (OpenSSH)
straight to the node is served as before; through the proxy, ``session.start``
names the user's address, not the proxy's.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import trio

from tests.roles.proxy.cluster import LOGIN, Cluster, open_cluster
from tests.roles.proxy.test_auth_outage import openssh_files, ssh
from trioport.authclient import ClientIdentity
from trioport.errors import DisconnectReason
from trioport.roles.node import proxyline
from trioport.ssh import KeySigner, connect
from trioport.sshproto import ConnectionConfig, Role
from trioport.sshproto import events as ev
from trioport.sshproto.certs import (
    CertType,
    ServiceRole,
    sign_certificate,
    trioport_extensions,
)
from trioport.sshproto.keys import PrivateKey, public_key_from_line
from trioport.sshproto.wire import Reader

TIMEOUT = 60


def proxy_identity(cluster: Cluster) -> ClientIdentity:
    return ClientIdentity.load(Path(cluster.config.teleport.data_dir) / "proxy")


def line(
    identity_key: PrivateKey,
    cert_blob: bytes,
    node_id: str,
    *,
    client: str = "203.0.113.7:4242",
    now: float | None = None,
) -> bytes:
    return proxyline.encode(
        key=identity_key,
        certificate=cert_blob,
        client_addr=client,
        node_id=node_id,
        now=time.time() if now is None else now,
        nonce=secrets.token_bytes(proxyline.NONCE_BYTES),
    )


async def refused(port: int, payload: bytes, *, eof: bool = False) -> str:
    """Send ``payload`` (then EOF if asked) to the node; the reason of the
    DISCONNECT it answers with."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    got = b""
    async with stream:
        await stream.send_all(payload)
        if eof:
            await stream.send_eof()
        with trio.fail_after(15):
            while data := await stream.receive_some(65536):
                got += data
    ident, _, rest = got.partition(b"\r\n")
    assert ident.startswith(b"SSH-2.0-trioport") and ident.endswith(b"+proxyline1")
    # Binary packets in the clear: the node's KEXINIT, then the DISCONNECT.
    while rest:
        reader = Reader(rest)
        length = reader.uint32()
        body, rest = rest[4 : 4 + length], rest[4 + length :]
        padding = body[0]
        payload_bytes = body[1 : len(body) - padding]
        if payload_bytes[0] == 1:  # SSH_MSG_DISCONNECT
            message = Reader(payload_bytes[1:])
            assert message.uint32() == DisconnectReason.HOST_NOT_ALLOWED_TO_CONNECT
            return message.text()
    raise AssertionError(f"no DISCONNECT in {got[:200]!r}")


async def login_cert(cluster: Cluster, name: str) -> tuple[PrivateKey, bytes, list[str]]:
    folder = cluster.tmp_path / f"{name}-ssh"
    await openssh_files(cluster, name, folder)
    key = PrivateKey.from_openssh((folder / "key").read_bytes())
    cert = public_key_from_line((folder / "key-cert.pub").read_text().strip())
    cas = [
        text.removeprefix("@cert-authority * ")
        for text in (folder / "known_hosts").read_text().splitlines()
    ]
    return key, cert.blob, cas


async def exec_over(stream: trio.abc.Stream, key: PrivateKey, cert: bytes) -> bytes:
    """Log in over ``stream`` (a node connection) as LOGIN and run ``echo``."""
    config = ConnectionConfig(role=Role.CLIENT, verify_host_key=lambda _b, _a: True)
    signer = KeySigner(key, certificate=cert)
    async with connect(
        "node", username=LOGIN, signers=[signer], config=config, stream=stream
    ) as conn:
        chan = await conn.open_session()
        assert await chan.request(ev.Exec(command=b"echo proxied"))
        out = b""
        while data := await chan.receive_some():
            out += data
        return out


async def session_starts(cluster: Cluster, count: int) -> list[dict[str, object]]:
    """The node's session.start events, once there are ``count`` (they arrive
    asynchronously)."""
    for _ in range(200):
        events = await cluster.events("session.start")
        if len(events) >= count:
            return events
        await trio.sleep(0.05)
    raise AssertionError(f"only {len(events)} session.start events")


async def test_forged_and_misused_proxy_lines_are_refused_with_a_reason(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_cluster(tmp_path) as cluster:
            node = await cluster.add_node("node1")
            await cluster.add_node("node2")
            port, node_id = node.addr.port, node.host_id
            proxy = proxy_identity(cluster)
            real = proxy.certificate.blob
            node2 = ClientIdentity.load(tmp_path / "node-node2" / "node")

            # A key of its own, with no certificate at all, or a self-made CA's.
            mallory = PrivateKey.generate()
            fake_ca = PrivateKey.generate()
            forged = sign_certificate(
                fake_ca,
                mallory.public,
                cert_type=CertType.HOST,
                key_id="proxy",
                principals=["127.0.0.1"],
                valid_after=0,
                valid_before=2**63,
                nonce=secrets.token_bytes(32),
                extensions=trioport_extensions(
                    service_role=ServiceRole.PROXY, cluster=cluster.name
                ),
            )
            reason = await refused(port, line(mallory, forged.blob, node_id))
            assert "refused the proxy line: the proxy's certificate is refused" in reason
            unsigned = line(mallory, mallory.public.blob, node_id)
            assert "plain key, not a host certificate" in await refused(port, unsigned)
            # The real certificate with mallory's signature.
            stolen = line(mallory, real, node_id)
            assert "signature does not verify" in await refused(port, stolen)
            # A node's own certificate (a compromised node) is not a proxy's.
            as_node = line(node2.key, node2.certificate.blob, node_id)
            assert "service role is 'node', not 'proxy'" in await refused(port, as_node)
            # The real proxy's lines, misused.
            for_node2 = line(proxy.key, real, node2.username)
            assert "meant for another node" in await refused(port, for_node2)
            old = line(proxy.key, real, node_id, now=time.time() - 600)
            assert "from this node's clock" in await refused(port, old)
            future = line(proxy.key, real, node_id, now=time.time() + 600)
            assert "from this node's clock" in await refused(port, future)
            # Malformed and oversized lines.
            assert "longer than 8192 bytes" in await refused(
                port, proxyline.MAGIC + b"x" * (proxyline.MAX_LINE + 10)
            )
            assert "fields, not 8" in await refused(port, b"TRIOPORT-PROXY v1 1.2.3.4:5\r\n")
            spoof = line(proxy.key, real, node_id).split(b" ")
            spoof[2] = b"198.51.100.1:1"  # the address changed after signing
            assert "signature does not verify" in await refused(port, b" ".join(spoof))
            bad_addr = line(proxy.key, real, node_id).replace(b"203.0.113.7:4242", b"evil:22")
            assert "is not IP:PORT" in await refused(port, bad_addr)
            assert "ended inside the proxy line" in await refused(
                port, b"TRIOPORT-PROXY v1", eof=True
            )

            # The real proxy's fresh line is believed once; its replay is not.
            key, cert, _cas = await login_cert_for(cluster, "alice")
            good = line(proxy.key, real, node_id)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(good)
            assert await exec_over(stream, key, cert) == b"proxied\n"
            events = await session_starts(cluster, 1)
            assert events[-1]["addr.remote"] == "203.0.113.7:4242"
            assert "used before (a replay)" in await refused(port, good)
            # Every refusal is an auth audit event naming where it came from.
            for _ in range(200):
                audited = [
                    e for e in await cluster.events("auth") if e.get("method") == "proxy-line"
                ]
                if len(audited) >= 13:
                    break
                await trio.sleep(0.05)
            assert len(audited) == 13
            assert all(e["success"] is False for e in audited)
            assert all(str(e["addr.remote"]).startswith("127.0.0.1:") for e in audited)
            assert any("replay" in str(e["error"]) for e in audited)


async def login_cert_for(cluster: Cluster, name: str) -> tuple[PrivateKey, bytes, list[str]]:
    await cluster.add_user(name)
    return await login_cert(cluster, name)


async def test_openssh_direct_is_plain_ssh_and_through_the_proxy_the_node_sees_the_user(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_cluster(tmp_path) as cluster:
            node = await cluster.add_node("node1")
            await cluster.add_user("bob")
            config = await openssh_files(cluster, "bob", tmp_path / "bob")
            # The user's side of every connection comes from 127.0.0.2; the proxy
            # reaches the node from 127.0.0.1.
            config.write_text(config.read_text() + "  BindAddress 127.0.0.2\n")

            # A client that waits for the server to speak first is served as before.
            scan = await trio.run_process(
                ["/usr/bin/ssh-keyscan", "-c", "-p", str(node.addr.port), "127.0.0.1"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert b"ssh-ed25519-cert-v01@openssh.com" in scan.stdout, scan.stderr.decode()
            direct = await ssh(
                config, "-p", str(node.addr.port), f"{LOGIN}@127.0.0.1", "echo direct"
            )
            assert direct.stdout == b"direct\n", direct.stderr.decode()
            jump = f"bob@127.0.0.1:{cluster.ssh_addr.port}"
            via = await ssh(config, "-J", jump, f"{LOGIN}@node1.{cluster.name}", "echo via proxy")
            assert via.stdout == b"via proxy\n", via.stderr.decode()
            events = await session_starts(cluster, 2)
            remotes = sorted(str(e["addr.remote"]).rpartition(":")[0] for e in events)
            assert remotes == ["127.0.0.2", "127.0.0.2"], events
