"""The proxy's HTTPS endpoints, over a real cluster and in isolation.

Requests go through httpx (what tsh uses) with the proxy's self-signed certificate
trusted. The rate limit and the read deadlines are tested on the handler and the
HTTP loop directly, with trio's mock clock for time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.roles.proxy.cluster import PASSWORD, Cluster, Totp, open_cluster
from trioport.authclient import AuthServiceUnavailable
from trioport.config import Address
from trioport.roles.auth._http import RateLimiter
from trioport.roles.proxy.web import HEADER_TIMEOUT, MAX_BODY_BYTES, WebAPI, serve_connection
from trioport.sshproto.certs import Certificate
from trioport.sshproto.keys import PrivateKey, public_key_from_line
from trioport.tls import client_context


async def call(cluster: Cluster, method: str, path: str, **kwargs: Any) -> httpx.Response:
    ctx = client_context(cafile=cluster.https_cert)

    def send() -> httpx.Response:
        with httpx.Client(verify=ctx, timeout=30) as http:
            return http.request(method, f"https://{cluster.web_addr}{path}", **kwargs)

    return await trio.to_thread.run_sync(send)


async def test_ping_tells_tsh_the_cluster_and_the_ssh_port(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        for path in ("/v1/webapi/ping", "/webapi/find"):
            reply = await call(cluster, "GET", path)
            assert reply.status_code == 200
            doc = reply.json()
            assert doc["cluster_name"] == cluster.name
            assert doc["auth"]["second_factor"] == "otp"
            assert doc["proxy"]["ssh"]["listen_addr"] == str(cluster.ssh_addr)
        headers = reply.headers
        assert headers["strict-transport-security"].startswith("max-age=")
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"
        assert "default-src 'none'" in headers["content-security-policy"]


async def test_invite_then_login_over_https(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        async with cluster.admin_client() as admin:
            invite = await admin.add_user("judy", logins=["judy"])
        token = invite["token"]
        assert invite["url"].endswith(token)
        reply = await call(cluster, "GET", f"/v1/webapi/users/password/token/{token}")
        assert reply.status_code == 200
        enrolment = reply.json()
        assert enrolment["user"] == "judy"
        assert enrolment["totp_uri"].startswith("otpauth://totp/")
        totp = Totp(enrolment["totp_secret"])
        body = {"token": token, "password": PASSWORD, "second_factor_token": await totp.code()}
        reply = await call(cluster, "PUT", "/v1/webapi/users/password/token", json=body)
        assert reply.status_code == 200 and reply.json() == {"user": "judy"}

        key = PrivateKey.generate()
        login = {
            "user": "judy",
            "password": PASSWORD,
            "otp_token": await totp.code(),
            "pub_key": key.public.openssh_line(),
            "ttl": 3600,
        }
        reply = await call(cluster, "POST", "/v1/webapi/ssh/certs", json=login)
        assert reply.status_code == 200, reply.text
        doc = reply.json()
        cert = public_key_from_line(doc["cert"])
        assert isinstance(cert, Certificate) and cert.key == key.public
        assert cert.key_id == "judy" and list(cert.principals) == ["judy"]
        assert cert.valid_before - cert.valid_after == 3600 + 60  # TTL + the backdated minute
        assert doc["cluster_name"] == cluster.name and doc["roles"] == ["access"]
        assert doc["host_ca"] and doc["known_hosts"][0].startswith("@cert-authority")

        # The same code twice: refused, with the one message for every cause.
        reply = await call(cluster, "POST", "/v1/webapi/ssh/certs", json=login)
        assert reply.status_code == 401
        assert reply.json() == {
            "error": {
                "kind": "authentication_failed",
                "message": "invalid user name, password or second factor code",
            }
        }
        events = await cluster.events("user.login")
        failed = [e for e in events if e.get("user") == "judy" and e.get("success") is False]
        assert failed and failed[-1]["addr.remote"].startswith("127.0.0.1:")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind"),
    [
        ("GET", "/v1/webapi/nothing", None, 404, "not_found"),
        ("GET", "/v1/webapi/ssh/certs", None, 405, "method_not_allowed"),
        ("POST", "/v1/webapi/ssh/certs", b"{not json", 400, "bad_request"),
        ("POST", "/v1/webapi/ssh/certs", b'{"user": "x"}', 400, "bad_request"),
        ("POST", "/v1/webapi/ssh/certs", b"x" * (MAX_BODY_BYTES + 1), 413, "too_large"),
    ],
    ids=["unknown-path", "wrong-method", "bad-json", "missing-field", "too-large"],
)
async def test_malformed_requests_get_errors_in_one_shape(
    tmp_path: Path, method: str, path: str, body: bytes | None, status: int, kind: str
) -> None:
    async with open_cluster(tmp_path) as cluster:
        reply = await call(cluster, method, path, content=body)
        assert reply.status_code == status
        assert reply.json()["error"]["kind"] == kind


async def test_a_bad_public_key_is_refused_before_the_password_is_checked(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path) as cluster:
        login = {"user": "nobody", "password": "x", "otp_token": "123456", "pub_key": "nope"}
        reply = await call(cluster, "POST", "/v1/webapi/ssh/certs", json=login)
        assert reply.status_code == 400 and reply.json()["error"]["kind"] == "bad_key"


# --- in isolation -----------------------------------------------------------------------


class _NoAuth:
    """A proxy state whose auth service is down."""

    cluster_name = "example.test"
    ssh_addr = web_addr = public_addr = None

    async def auth(self) -> Any:
        raise AuthServiceUnavailable("the auth service is unavailable: test")


async def test_credential_endpoints_are_rate_limited_per_source() -> None:
    api = WebAPI(_NoAuth(), limiter=RateLimiter(per_minute=1, burst=2))  # type: ignore[arg-type]
    body = b'{"user": "a", "password": "b", "otp_token": "123456", "pub_key": "k"}'
    here, there = Address("192.0.2.1", 1000), Address("192.0.2.2", 1000)
    statuses = [
        (await api.handle("POST", "/v1/webapi/ssh/certs", body, here)).status for _ in range(3)
    ]
    assert statuses == [503, 503, 429]
    assert (await api.handle("POST", "/v1/webapi/ssh/certs", body, there)).status == 503
    assert (await api.handle("GET", "/v1/webapi/ping", b"", here)).status == 200  # not limited


async def _serve(stream: trio.abc.Stream, api: WebAPI) -> None:
    """One connection, closed afterwards as serve_web closes it."""
    async with stream:
        await serve_connection(stream, api.handle, None)


async def test_a_client_that_never_finishes_its_headers_is_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    api = WebAPI(_NoAuth())  # type: ignore[arg-type]
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, server, api)
        await client.send_all(b"GET /v1/webapi/ping HTTP/1.1\r\nHost: x\r\n")  # no blank line
        start = trio.current_time()
        reply = b""
        while chunk := await client.receive_some():
            reply += chunk
        assert trio.current_time() - start >= HEADER_TIMEOUT
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in reply.lower()


async def test_keep_alive_answers_requests_in_order(autojump_clock: trio.testing.MockClock) -> None:
    api = WebAPI(_NoAuth())  # type: ignore[arg-type]
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, server, api)
        request = b"GET /v1/webapi/ping HTTP/1.1\r\nHost: x\r\n\r\n"
        await client.send_all(request + b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while reply.count(b"HTTP/1.1 ") < 2:
            reply += await client.receive_some()
        await client.send_eof()
    first, second = reply.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and second.startswith(b"404 ")
