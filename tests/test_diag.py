"""--diag-addr: /healthz, /readyz and Prometheus /metrics of a running process."""

from __future__ import annotations

import attrs
import trio

from trioport.config import Address, Config, apply_flags
from trioport.process import run


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
