"""What the etcd backend promises beyond the compliance suite: real leases, watches
that survive a dropped connection without losing events, failover between peers,
prefixes that keep clusters apart, and TLS with client certificates."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.store.conftest import EtcdServer, free_port, start_etcd, stop_etcd
from trioport.errors import BackendUnavailable, NotFound
from trioport.store import EventType, Item, open_backend, open_etcd_backend
from trioport.store.etcd import tls_context

PATIENCE = 20


class DroppingProxy:
    """A loopback TCP relay to etcd that can cut every connection and refuse new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.blocked = False
        self.accepted = 0
        self.refused = 0
        self._scopes: set[trio.CancelScope] = set()
        self._refusal = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    def drop_all(self) -> None:
        self.blocked = True
        self._refusal = trio.Event()
        for scope in self._scopes:
            scope.cancel()

    async def wait_for_a_refusal(self) -> None:
        await self._refusal.wait()

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.blocked:
            self.refused += 1
            self._refusal.set()
            await client.aclose()
            return
        self.accepted += 1
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                async with client, upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream)
                    nursery.start_soon(self._pump, upstream, client)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._scopes.discard(scope)
        await client.aclose()

    @staticmethod
    async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            async for data in source:
                await sink.send_all(data)
            await sink.send_eof()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def proxied(server: EtcdServer) -> AsyncIterator[tuple[DroppingProxy, str]]:
    proxy = DroppingProxy(int(server.url.rsplit(":", 1)[1]))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        yield proxy, f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def test_a_lease_expires_in_real_time_and_watchers_see_the_delete(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    async with (
        open_etcd_backend([etcd_server.url], prefix=etcd_prefix) as db,
        db.watch(["/nodes/"]) as events,
    ):
        put = await db.put(Item("/nodes/n1", b"v", expires=time.time() + 1))
        with trio.fail_after(PATIENCE):
            assert (await events.receive()).item == put
            deleted = await events.receive()
        assert (deleted.type, deleted.item.key) == (EventType.DELETE, "/nodes/n1")
        with pytest.raises(NotFound):
            await db.get("/nodes/n1")


async def test_keys_live_under_the_prefix_and_expiring_ones_carry_a_lease(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    async with open_etcd_backend([etcd_server.url], prefix=etcd_prefix) as db:
        await db.put(Item("/users/alice", b"a"))
        await db.put(Item("/tokens/t", b"t", expires=time.time() + 600))
    raw = etcd_server.http(
        "/v3/kv/range",
        {"key": base64.b64encode(etcd_prefix.encode()).decode(), "range_end": "AA=="},
    )
    kvs = {base64.b64decode(kv["key"]).decode(): kv for kv in raw["kvs"]}  # type: ignore[union-attr]
    assert etcd_prefix + "/users/alice" in kvs
    assert "lease" not in kvs[etcd_prefix + "/users/alice"]
    assert int(kvs[etcd_prefix + "/tokens/t"]["lease"]) != 0


async def test_the_watch_resumes_after_the_connection_drops_and_loses_nothing(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    async with (
        proxied(etcd_server) as (proxy, proxy_url),
        open_etcd_backend([proxy_url], prefix=etcd_prefix) as watching,
        open_etcd_backend([etcd_server.url], prefix=etcd_prefix) as writer,
        watching.watch(["/sessions/"]) as events,
    ):
        a = await writer.put(Item("/sessions/a", b"1"))
        with trio.fail_after(PATIENCE):
            assert (await events.receive()).item == a
            proxy.drop_all()
            await proxy.wait_for_a_refusal()  # the watcher noticed and is retrying
        b = await writer.put(Item("/sessions/b", b"2"))
        await writer.delete("/sessions/a")
        c = await writer.put(Item("/sessions/c", b"3"))
        proxy.blocked = False
        with trio.fail_after(PATIENCE):
            got = [await events.receive() for _ in range(3)]
        assert got[0].item == b
        assert (got[1].type, got[1].item.key) == (EventType.DELETE, "/sessions/a")
        assert got[2].item == c
        assert proxy.accepted >= 2  # it came back on a new connection


async def test_a_watch_whose_history_was_compacted_away_must_resync(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    async with (
        proxied(etcd_server) as (proxy, proxy_url),
        open_etcd_backend([proxy_url], prefix=etcd_prefix) as watching,
        open_etcd_backend([etcd_server.url], prefix=etcd_prefix) as writer,
    ):
        async with watching.watch(["/"]) as events:
            await writer.put(Item("/k/1", b"v"))
            with trio.fail_after(PATIENCE):
                await events.receive()
                proxy.drop_all()
                await proxy.wait_for_a_refusal()
            await writer.put(Item("/k/2", b"v"))
            last = await writer.put(Item("/k/3", b"v"))
            etcd_server.http("/v3/kv/compaction", {"revision": str(last.revision)})
            proxy.blocked = False
            with trio.fail_after(PATIENCE), pytest.raises(trio.BrokenResourceError, match="resync"):
                await events.receive()
        # A new watch (after re-reading) works.
        async with watching.watch(["/"]) as events:
            put = await writer.put(Item("/k/4", b"v"))
            with trio.fail_after(PATIENCE):
                assert (await events.receive()).item == put


async def test_a_dead_peer_is_skipped_for_the_next_one(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with open_etcd_backend([dead, etcd_server.url], prefix=etcd_prefix) as db:
        await db.put(Item("/k", b"v"))
        assert (await db.get("/k")).value == b"v"


async def test_no_reachable_peer_is_backend_unavailable() -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with pytest.raises(BackendUnavailable, match="no etcd peer"):
        async with open_etcd_backend(dead):
            pass


async def test_prefixes_keep_two_clusters_apart(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    async with (
        open_etcd_backend([etcd_server.url], prefix=etcd_prefix + "-one") as one,
        open_etcd_backend([etcd_server.url], prefix=etcd_prefix + "-two") as two,
        one.watch(["/"]) as one_events,
    ):
        await two.put(Item("/users/alice", b"two's"))
        await one.put(Item("/users/bob", b"one's"))
        with pytest.raises(NotFound):
            await one.get("/users/alice")
        assert [i.key for i in await one.get_range("/")] == ["/users/bob"]
        assert await two.delete_range("/") == 1
        with trio.fail_after(PATIENCE):
            assert (await one_events.receive()).item.key == "/users/bob"
        assert (await one.get("/users/bob")).value == b"one's"


async def test_open_backend_opens_etcd_from_a_storage_section(
    etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    spec = {"type": "etcd", "peers": [etcd_server.url], "prefix": etcd_prefix}
    async with open_backend(spec) as db:
        await db.put(Item("/k", b"v"))
        assert (await db.get("/k")).value == b"v"


# --- TLS ------------------------------------------------------------------------------


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    usage: list[x509.ObjectIdentifier] | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=usage is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdServer, Path]]:
    """An etcd that serves https and demands a client certificate from our CA."""
    d = tmp_path_factory.mktemp("etcd-tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test etcd CA", ca_key, None, None)
    _write_pem(d / "ca", ca, ca_key)
    for name, usage in (
        # etcd's JSON gateway dials etcd's own gRPC port presenting the server
        # certificate as a client certificate, so it needs clientAuth too.
        ("server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        _write_pem(d / name, _certificate(name, key, (ca.subject, ca_key), usage), key)
    server = start_etcd(
        d / "data",
        extra=(
            f"--cert-file={d / 'server.crt'}",
            f"--key-file={d / 'server.key'}",
            f"--trusted-ca-file={d / 'ca.crt'}",
            "--client-cert-auth",
        ),
        tls=tls_context(str(d / "ca.crt"), str(d / "client.crt"), str(d / "client.key")),
    )
    try:
        yield server, d
    finally:
        stop_etcd(server)


async def test_tls_with_a_client_certificate(tls_etcd: tuple[EtcdServer, Path]) -> None:
    server, d = tls_etcd
    spec = {
        "type": "etcd",
        "peers": [server.url],
        "prefix": "/tls",
        "tls_ca_file": str(d / "ca.crt"),
        "tls_cert_file": str(d / "client.crt"),
        "tls_key_file": str(d / "client.key"),
    }
    async with open_backend(spec) as db, db.watch(["/"]) as events:
        put = await db.put(Item("/users/alice", b"over tls"))
        with trio.fail_after(PATIENCE):
            assert (await events.receive()).item == put
    # Without the client certificate etcd refuses the handshake.
    with pytest.raises(BackendUnavailable):
        async with open_backend({**spec, "tls_cert_file": None, "tls_key_file": None}):
            pass
