"""A browser as the web UI tests need one: HTTPS requests with explicit cookies, websockets.

:class:`Browser` keeps no cookie jar of its own: each request carries exactly the
cookie the test gives it (so a test can replay an old one), and the Set-Cookie
answers are parsed for the test to inspect. :func:`terminal` opens the terminal
websocket with trio-websocket; :class:`RawSocket` speaks the websocket by hand
(wsproto for the handshake and for reading, hand-built frames for writing) so
a test can send frames no well-behaved client would.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
import wsproto
import wsproto.events as wse

from tests.roles.proxy.cluster import Cluster, ClusterUser
from trioport.roles.proxy.webui.sessions import COOKIE_NAME
from trioport.roles.proxy.webui.terminal import SUBPROTOCOL
from trioport.tls import client_context


@dataclass
class Login:
    """A logged-in browser's cookie, CSRF token and the login document."""

    cookie: str
    csrf: str
    doc: dict[str, Any]
    set_cookie: str


def cookie_attributes(set_cookie: str) -> tuple[str, str, dict[str, str]]:
    """``(name, value, {attribute (lower-case): value})`` of a Set-Cookie value."""
    first, *rest = [p.strip() for p in set_cookie.split(";")]
    name, _, value = first.partition("=")
    attrs = {}
    for part in rest:
        key, _, val = part.partition("=")
        attrs[key.lower()] = val
    return name, value, attrs


@dataclass
class Browser:
    cluster: Cluster
    origin: str = field(init=False)

    def __post_init__(self) -> None:
        self.ctx = client_context(cafile=self.cluster.https_cert)
        self.origin = f"https://{self.cluster.web_addr}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        cookie: str | None = None,
        csrf: str | None = None,
        origin: str | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        extra = dict(headers or {})
        if cookie is not None:
            extra["cookie"] = f"{COOKIE_NAME}={cookie}"
        if csrf is not None:
            extra["x-csrf-token"] = csrf
        if origin is not None:
            extra["origin"] = origin
        async with httpx.AsyncClient(verify=self.ctx, timeout=30) as http:
            return await http.request(
                method,
                f"{self.origin}{path}",
                json=json_body,
                content=content,
                headers=extra,
            )

    async def login(self, user: ClusterUser, *, cookie: str | None = None) -> Login:
        body = {
            "user": user.name,
            "password": user.password,
            "second_factor_token": await user.totp.code(),
        }
        reply = await self.request(
            "POST", "/v1/webapi/sessions/web", json_body=body, origin=self.origin, cookie=cookie
        )
        assert reply.status_code == 200, reply.text
        set_cookie = reply.headers["set-cookie"]
        name, value, _ = cookie_attributes(set_cookie)
        assert name == COOKIE_NAME
        doc = reply.json()
        return Login(value, doc["csrf_token"], doc, set_cookie)


def _headers(login: Login | None, origin: str | None) -> list[tuple[bytes, bytes]]:
    out = []
    if origin is not None:
        out.append((b"origin", origin.encode()))
    if login is not None:
        out.append((b"cookie", f"{COOKIE_NAME}={login.cookie}".encode()))
    return out


class Rejected(Exception):
    """The server answered the websocket handshake with an HTTP status, not 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class RawSocket:
    """A websocket client over TLS: wsproto for the protocol, and raw frames on demand.

    It answers pings only when ``pong`` is true, so a test can play a dead client.
    """

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], *, pong: bool = True) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: list[wse.Event] = []
        self.pong = pong
        self.subprotocol: str | None = None
        self.close: wse.CloseConnection | None = None

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        browser: Browser,
        login: Login | None,
        query: str,
        *,
        origin: str | None = "own",
        bearer: str | None = "own",
        pong: bool = True,
        early: bytes = b"",
        local_address: str | None = None,
    ) -> AsyncIterator[RawSocket]:
        """Open the terminal websocket as a browser would (Origin, bearer, cookie).

        ``early`` is sent right behind the handshake, before the server answers;
        ``local_address`` is the address the browser connects from.

        Raises:
            Rejected: the server refused the handshake.
        """
        addr = browser.cluster.web_addr
        protocols = [SUBPROTOCOL]
        token = login.csrf if bearer == "own" and login is not None else bearer
        if token is not None:
            protocols.append(f"bearer.{token}")
        tcp = await trio.open_tcp_stream(addr.host, addr.port, local_address=local_address)
        stream = trio.SSLStream(tcp, browser.ctx, server_hostname=addr.host)
        raw = cls(stream, pong=pong)
        async with stream:
            request = wse.Request(
                host=str(addr),
                target=f"/v1/webapi/terminal?{query}",
                subprotocols=protocols,
                extra_headers=_headers(login, browser.origin if origin == "own" else origin),
            )
            await stream.send_all(raw.ws.send(request) + early)
            event = await raw.next_event()
            if isinstance(event, wse.RejectConnection):
                raise Rejected(event.status_code)
            assert isinstance(event, wse.AcceptConnection), event
            raw.subprotocol = event.subprotocol
            yield raw

    async def next_event(self, seconds: float = 20) -> wse.Event:
        with trio.fail_after(seconds):
            while not self.events:
                data = await self.stream.receive_some(65536)
                self.ws.receive_data(data or None)
                for event in self.ws.events():
                    if isinstance(event, wse.Ping) and self.pong:
                        await self.stream.send_all(self.ws.send(event.response()))
                    elif isinstance(event, wse.CloseConnection):
                        self.close = event
                        if self.ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                            await self.stream.send_all(self.ws.send(event.response()))
                    self.events.append(event)
        return self.events.pop(0)

    async def get_message(self) -> str:
        """The next text message (pings and pongs skipped); a close raises Closed."""
        while True:
            event = await self.next_event()
            if isinstance(event, wse.TextMessage):
                assert event.message_finished  # the server sends whole messages
                return event.data
            if isinstance(event, wse.CloseConnection):
                raise Closed(event.code, event.reason)

    async def next_message(self) -> dict[str, Any]:
        return json.loads(await self.get_message())

    async def send_message(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(wse.Message(data=text)))

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send_message(json.dumps(message))

    async def send_frame(
        self, opcode: int, payload: bytes, *, masked: bool = True, fin: bool = True
    ) -> None:
        """One frame as given, bypassing wsproto (RFC 6455 §5.2)."""
        await self.stream.send_all(frame(opcode, payload, masked=masked, fin=fin))

    async def close_code(self) -> int:
        """Read until the server's close frame; its code."""
        while self.close is None:
            await self.next_event()
        return self.close.code


def frame(opcode: int, payload: bytes, *, masked: bool = True, fin: bool = True) -> bytes:
    """A websocket frame, built by hand (RFC 6455 §5.2)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head.append(mask_bit | n)
    elif n < 65536:
        head.append(mask_bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", n)
    if masked:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(head) + payload


class Closed(Exception):
    """The server closed the websocket."""

    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


def terminal(
    browser: Browser,
    login: Login | None,
    query: str,
    *,
    origin: str | None = "own",
    bearer: str | None = "own",
    pong: bool = True,
    local_address: str | None = None,
) -> Any:
    """The terminal websocket (``query`` after ``?``), opened as a browser opens it."""
    return RawSocket.open(
        browser,
        login,
        query,
        origin=origin,
        bearer=bearer,
        pong=pong,
        local_address=local_address,
    )


async def read_until(ws: RawSocket, text: str, *, seconds: float = 20) -> str:
    """Output until it contains ``text``; returns the output."""
    output = ""
    with trio.fail_after(seconds):
        while text not in output:
            message = await ws.next_message()
            if message["type"] == "output":
                output += message["data"]
            elif message["type"] == "close":
                raise AssertionError(f"closed before {text!r}: {message} after {output!r}")
    return output


async def shell_ready(ws: RawSocket) -> None:
    """Wait until the shell runs commands (its start-up files have run).

    A shell killed while its start-up files run can leave things half done (a
    login shell's rc files may take locks), so every test lets the shell start.
    """
    await ws.send_json({"type": "input", "data": "echo rea''dy\r"})
    await read_until(ws, "ready\r\n")


async def until_close_message(ws: RawSocket, *, seconds: float = 20) -> dict[str, Any]:
    """Skip output until the server's ``close`` message; return it."""
    with trio.fail_after(seconds):
        while (message := await ws.next_message())["type"] != "close":
            pass
    return message
