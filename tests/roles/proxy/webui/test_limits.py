"""The HTTPS port's size limits and deadlines, over real TLS to a real proxy.

Deadlines are shortened with monkeypatch (the module constants are read at each
request), so a slow client is cut off in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.roles.proxy.cluster import Cluster, open_cluster
from trioport.roles.proxy import web
from trioport.tls import client_context


async def _exchange(cluster: Cluster, data: bytes, *, then_wait: bool = True) -> bytes:
    """Send ``data`` over a fresh TLS connection; everything the proxy answers until it closes."""
    addr = cluster.web_addr
    tcp = await trio.open_tcp_stream(addr.host, addr.port)
    ctx = client_context(cafile=cluster.https_cert)
    stream = trio.SSLStream(tcp, ctx, server_hostname=addr.host)
    reply = b""
    async with stream:
        await stream.send_all(data)
        with trio.fail_after(20):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                reply += chunk
    return reply


def _request(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + body


async def test_headers_over_the_limit_are_refused(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        big = "x" * (web.MAX_HEADER_BYTES + 1)
        reply = await _exchange(
            cluster, _request(f"GET /v1/webapi/ping HTTP/1.1\nHost: a\nX-Big: {big}\n")
        )
        assert reply.startswith(b"HTTP/1.1 431 ")
        assert b"strict-transport-security" in reply.lower()


async def test_a_body_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster:
        n = web.MAX_BODY_BYTES + 1
        head = (
            f"POST /v1/webapi/sessions/web HTTP/1.1\nHost: a\n"
            f"Content-Type: application/json\nContent-Length: {n}\n"
        )
        reply = await _exchange(cluster, _request(head))  # the body never comes
        assert reply.startswith(b"HTTP/1.1 413 ")
        assert b'"too_large"' in reply
        # Chunked, so the size is only known while reading: cut off past the limit.
        head = "POST /v1/webapi/sessions/web HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n"
        chunk = b"%x\r\n%s\r\n" % (n, b"{" * n)
        reply = await _exchange(cluster, _request(head, chunk + b"0\r\n\r\n"))
        assert reply.startswith(b"HTTP/1.1 413 ")


async def test_a_client_slow_to_send_its_headers_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "HEADER_TIMEOUT", 0.5)
    async with open_cluster(tmp_path) as cluster:
        reply = await _exchange(cluster, b"GET /v1/webapi/ping HTTP/1.1\r\nHost: a\r\n")
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in reply.lower()


async def test_a_client_slow_to_send_its_body_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "BODY_TIMEOUT", 0.5)
    async with open_cluster(tmp_path) as cluster:
        head = "POST /v1/webapi/sessions/web HTTP/1.1\nHost: a\nContent-Length: 100\n"
        reply = await _exchange(cluster, _request(head, b'{"user": '))
        assert reply.startswith(b"HTTP/1.1 408 ")


async def test_an_idle_keep_alive_connection_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "IDLE_TIMEOUT", 0.5)
    async with open_cluster(tmp_path) as cluster:
        reply = await _exchange(cluster, b"GET /v1/webapi/ping HTTP/1.1\r\nHost: a\r\n\r\n")
        # One answer, then the proxy closes the idle connection by itself.
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"HTTP/1.1 ") == 1
