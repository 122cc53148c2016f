"""--diag-addr: /healthz, /readyz and Prometheus /metrics of a running process."""

from __future__ import annotations

import functools
import json
import socket

import attrs
import pytest
import trio

from trioport.authclient import AuthServiceUnavailable, ClientIdentity
from trioport.config import Address, Config, apply_flags
from trioport.diag import Health, serve_diag
from trioport.process import run
from trioport.roles.node.authlink import AuthLink
from trioport.sshproto.certs import CertType, sign_certificate
from trioport.sshproto.keys import PrivateKey


async def get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def auth_only(tmp_path) -> Config:
    config = apply_flags(Config.default(str(tmp_path)), roles="auth", diag_addr="127.0.0.1:0")
    return attrs.evolve(
        config,
        auth_service=attrs.evolve(config.auth_service, listen_addr=Address("127.0.0.1", 0)),
    )


async def test_health_readiness_and_metrics(tmp_path, nursery) -> None:
    with trio.fail_after(60):
        started = await nursery.start(run, auth_only(tmp_path))
        port = started["diag"][0][1]
        assert await get(port, "/healthz") == (200, b"ok\n")
        status, body = await get(port, "/readyz")
        assert status == 200 and b'"auth": true' in body
        # One SSH connection to auth shows up in the connection counter.
        auth_port = started["auth"][0][1]
        stream = await trio.open_tcp_stream("127.0.0.1", auth_port)
        assert (await stream.receive_some()).startswith(b"SSH-2.0-")
        await stream.aclose()
        status, body = await get(port, "/metrics")
        assert status == 200
        assert b"trioport_ssh_connections_total" in body
        assert b"trioport_certificates_issued_total" in body
        assert (await get(port, "/nope"))[0] == 404


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_readyz_names_what_is_degraded_and_since_when(nursery) -> None:
    clock = FakeClock(1_795_000_000.0)  # 2026-11-18T11:06:40Z
    health = Health(clock)
    started = await nursery.start(
        functools.partial(serve_diag, "127.0.0.1", 0, lambda: {"node": True}, health=health)
    )
    port = started[0][1]
    assert (await get(port, "/readyz"))[0] == 200

    health.unreachable("node: auth", "auth", "Connection refused")
    clock.now += 90  # still down a minute and a half later: the start is kept
    health.unreachable("node: auth", "auth", "no answer within 10s")
    status, body = await get(port, "/readyz")
    assert status == 503
    assert json.loads(body) == {
        "ready": False,
        "services": {"node": True},
        "degraded": {
            "node: auth": "auth unreachable since 2026-11-18T11:06:40Z: no answer within 10s"
        },
    }
    assert await get(port, "/healthz") == (200, b"ok\n")  # alive: do not restart it

    health.ok("node: auth")
    assert (await get(port, "/readyz"))[0] == 200


def _identity() -> ClientIdentity:
    ca, key = PrivateKey.generate(), PrivateKey.generate()
    cert = sign_certificate(
        ca,
        key.public,
        cert_type=CertType.HOST,
        key_id="host.diag.test",
        principals=["host"],
        valid_after=0,
        valid_before=2**40,
        nonce=b"n" * 32,
    )
    return ClientIdentity(
        key=key, certificate=cert, host_cas=(ca.public,), cluster_name="diag.test"
    )


async def test_a_node_with_no_auth_server_is_not_ready_until_its_link_ends(nursery) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    health = Health()
    link = AuthLink([dead, dead], _identity(), health=health, backoff_base=0.01, backoff_max=0.02)
    scope = trio.CancelScope()
    nursery.start_soon(_run_in, scope, link)
    with trio.fail_after(10):
        while not health.problems():  # noqa: ASYNC110 - the link reports by itself
            await trio.sleep(0.01)
    since = health.since("node: auth")
    (text,) = health.problems().values()
    assert text.startswith("auth unreachable since 20")
    assert "Connection refused" in text
    await trio.sleep(0.1)  # more failed attempts: still the same outage
    assert health.since("node: auth") == since
    with trio.fail_after(5), pytest.raises(AuthServiceUnavailable, match="did not answer"):
        await link.call(lambda c: c.whoami(), within=0.05)
    scope.cancel()
    with trio.fail_after(5):
        while health.problems():  # noqa: ASYNC110 - cleared as the link ends
            await trio.sleep(0.01)


async def _run_in(scope: trio.CancelScope, link: AuthLink) -> None:
    with scope:
        await link.run()
