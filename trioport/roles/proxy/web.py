"""The proxy's HTTPS port (3080): tsh's endpoints and the web UI, on Teleport's paths.

HTTP/1.1 (h11) over TLS (trio's ``SSLStream`` with the contexts of
:mod:`trioport.tls`), keep-alive, one request at a time per connection
(:func:`serve_https`). ``docs/http-api.md`` (the proxy and web UI sections)
documents every endpoint. This module holds the loop and tsh's endpoints
(:class:`WebAPI`); the browser's (web sessions, their JSON API, the terminal
websocket, static files) are :mod:`.webui`, which :func:`serve_web` puts in front:

- ``GET /v1/webapi/ping`` and ``GET /webapi/find``: the cluster's name, how users
  authenticate (local users, TOTP) and where the proxy's SSH port is. No
  authentication; nothing secret.
- ``POST /v1/webapi/ssh/certs``: ``tsh login``. The user's name, password, TOTP
  code, a public key and a TTL go to the auth service (``POST /v1/login``, as the
  proxy, with the caller's address for the audit log and the lockout); a user
  certificate and the cluster's host CA come back.
- ``GET /v1/webapi/users/password/token/TOKEN`` and
  ``PUT /v1/webapi/users/password/token``: finishing an invite (TOTP enrolment
  data, then password and a confirming code). The web UI answers these (it adds
  a QR code, and a web session once the invite is done).

Every endpoint that takes a credential or a token is rate-limited per source
address (Teleport's limits for unauthenticated endpoints: 20 a minute, bursts of
40), on top of the auth service's own per-user lockout. Headers are at most
:data:`MAX_HEADER_BYTES` and must arrive within :data:`HEADER_TIMEOUT`; bodies are
at most :data:`MAX_BODY_BYTES` and must arrive within :data:`BODY_TIMEOUT`; the TLS
handshake has :data:`HANDSHAKE_TIMEOUT` (Teleport's read deadlines); an idle
keep-alive connection closes after :data:`IDLE_TIMEOUT`. Every response carries
HSTS and the usual hardening headers (:func:`.webui.http.security_headers`); API
answers are ``no-store``. Passwords and codes are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import h11
import trio

from trioport import __version__
from trioport.authclient import APIError
from trioport.config import Address
from trioport.errors import (
    TrioportError,
)
from trioport.roles.auth._http import (
    HTTPError,
    RateLimiter,
    Request,
    Response,
    Router,
    bad_request,
    field_opt_number,
    field_str,
)

from .state import ProxyState
from .webui.http import API_CSP, ERROR_STATUS, HTTPRequest, WebResponse, security_headers

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "HEADER_TIMEOUT",
    "IDLE_TIMEOUT",
    "LOGIN_BURST",
    "LOGIN_RATE_PER_MINUTE",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "SECURITY_HEADERS",
    "App",
    "HTTPLink",
    "WebAPI",
    "send_response",
    "serve_connection",
    "serve_https",
    "serve_web",
]

log = logging.getLogger("trioport.proxy.web")

#: Largest request body (a login is a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024
#: Largest request header block (h11's default; nginx allows 8 KiB, node.js 80 KiB).
MAX_HEADER_BYTES = 16 * 1024
#: Seconds for the TLS handshake, the request headers, and between requests.
HANDSHAKE_TIMEOUT = 15.0
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
#: Seconds to read a request body once its headers are in.
BODY_TIMEOUT = 30.0
#: Per-source limits of the endpoints that take credentials or tokens.
LOGIN_RATE_PER_MINUTE = 20
LOGIN_BURST = 40
_RECEIVE_SIZE = 16 * 1024
#: After refusing a request, what the client still sends is read and dropped for
#: this long, up to this much, before the connection closes.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024

#: Sent with every JSON answer (pages get the web UI's content policy instead).
SECURITY_HEADERS = (*security_headers(API_CSP), ("cache-control", "no-store"))


@attrs.frozen
class _Policy:
    #: Rate-limited per source address.
    limited: bool = False


_router: Router[_Policy] = Router()


def _route(method: str, template: str, *, limited: bool = False) -> Callable[[Any], Any]:
    return _router.route(method, template, _Policy(limited))


class WebAPI:
    """The HTTPS endpoints over one :class:`~.state.ProxyState`.

    Args:
        state: the proxy's shared state.
        limiter: per-source limiter of the credential endpoints.
    """

    def __init__(self, state: ProxyState, *, limiter: RateLimiter | None = None) -> None:
        self.state = state
        self.limiter = limiter or RateLimiter(per_minute=LOGIN_RATE_PER_MINUTE, burst=LOGIN_BURST)

    async def handle(self, method: str, target: str, body: bytes, peer: Address | None) -> Response:
        """Answer one request; never raises for a caller's mistake."""
        try:
            route, request = _router.find(method, target, body)
            if route.policy.limited and not self.limiter.allow(peer.host if peer else "unknown"):
                raise HTTPError(429, "rate_limited", "too many attempts; try again in a minute")
            result = await route.handler(self, request, peer)
        except HTTPError as exc:
            return Response.error(exc.status, exc.kind, exc.message)
        except APIError as exc:
            status = exc.status if 400 <= exc.status < 600 else 502
            return Response.error(status, exc.kind, str(exc))
        except Exception as exc:
            for cls, status, kind in ERROR_STATUS:
                if isinstance(exc, cls):
                    return Response.error(status, kind, str(exc))
            if isinstance(exc, TrioportError):
                return Response.error(500, "internal", str(exc))
            log.exception("web: %s %s failed", method, target[:200])
            return Response.error(500, "internal", "internal error; see the proxy's log")
        return result if isinstance(result, Response) else Response.json(result)

    # --- discovery -------------------------------------------------------------------

    def ping(self, proxy_host: str | None = None) -> dict[str, Any]:
        """What ``GET /v1/webapi/ping`` answers."""
        state = self.state
        ssh = state.ssh_addr
        web = state.web_addr
        public = state.public_addr
        ssh_public = str(Address(public.host, ssh.port)) if public and ssh else None
        return {
            "cluster_name": state.cluster_name,
            "server_version": __version__,
            "min_client_version": __version__,
            "auth": {"type": "local", "second_factor": "otp", "local": {"name": ""}},
            "proxy": {
                "ssh": {
                    "listen_addr": str(ssh) if ssh else None,
                    "public_addr": ssh_public,
                },
                "web": {
                    "listen_addr": str(web) if web else None,
                    "public_addr": str(public) if public else None,
                },
            },
        }

    @_route("GET", "/v1/webapi/ping")
    async def _ping(self, req: Request, peer: Address | None) -> Any:
        return self.ping()

    @_route("GET", "/webapi/find")
    async def _find(self, req: Request, peer: Address | None) -> Any:
        return self.ping()

    # --- tsh login -------------------------------------------------------------------

    @_route("POST", "/v1/webapi/ssh/certs", limited=True)
    async def _ssh_certs(self, req: Request, peer: Address | None) -> Any:
        body = req.json()
        code = body.get("otp_token", body.get("totp_code"))
        if not isinstance(code, str):
            raise bad_request("otp_token: expected the TOTP code as a string")
        user = field_str(body, "user")
        client = await self.state.auth()
        result = await client.login(
            user,
            field_str(body, "password"),
            code,
            field_str(body, "pub_key"),
            ttl=field_opt_number(body, "ttl"),
            remote_addr=str(peer) if peer else None,
        )
        cert = result.certificate
        log.info("issued a certificate to %s (via %s)", cert.key_id, peer)
        return {
            "cert": cert.openssh_line(),
            "username": cert.key_id,
            "principals": list(cert.principals),
            "valid_after": cert.valid_after,
            "valid_before": cert.valid_before,
            "roles": list(result.user.spec.roles),
            "cluster_name": self.state.cluster_name,
            "host_ca": list(result.host_ca.spec.public_keys),
            "known_hosts": list(result.known_hosts),
        }

    # --- invites ---------------------------------------------------------------------

    @_route("GET", "/v1/webapi/users/password/token/{token}", limited=True)
    async def _invite(self, req: Request, peer: Address | None) -> Any:
        client = await self.state.auth()
        enrolment = await client.start_enrolment(req.params["token"])
        return {
            "user": enrolment["user"],
            "totp_secret": enrolment["secret"],
            "totp_uri": enrolment["uri"],
        }

    @_route("PUT", "/v1/webapi/users/password/token", limited=True)
    async def _complete_invite(self, req: Request, peer: Address | None) -> Any:
        body = req.json()
        code = body.get("second_factor_token", body.get("totp_code"))
        if not isinstance(code, str):
            raise bad_request("second_factor_token: expected the TOTP code as a string")
        client = await self.state.auth()
        user = await client.complete_invite(
            field_str(body, "token"),
            field_str(body, "password"),
            code,
            remote_addr=str(peer) if peer else None,
        )
        return {"user": user.metadata.name}


# --- HTTP/1.1 over TLS -----------------------------------------------------------------------


class App(Protocol):
    """What :func:`serve_https` serves: answers, and websocket upgrades it takes over."""

    async def handle(self, request: HTTPRequest) -> WebResponse: ...

    def wants_upgrade(self, request: HTTPRequest) -> bool: ...

    async def upgrade(self, request: HTTPRequest, link: HTTPLink) -> None: ...


@attrs.define(eq=False)
class HTTPLink:
    """The connection under a request: h11's state and the (TLS) stream.

    An app that takes a connection over (:meth:`App.upgrade`) answers through
    :meth:`refuse` (an ordinary response, then the connection closes) or
    :meth:`switch` (``101 Switching Protocols``; the bytes after the request are
    returned, to hand to the next protocol).
    """

    conn: h11.Connection
    stream: trio.abc.Stream

    async def refuse(self, response: WebResponse) -> None:
        await send_response(self.conn, self.stream, response, close=True)

    async def switch(self, headers: list[tuple[str, str]]) -> bytes:
        headers = [*headers, *security_headers(API_CSP), ("server", _SERVER)]
        out = self.conn.send(h11.InformationalResponse(status_code=101, headers=headers))
        await self.stream.send_all(out)
        data, _closed = self.conn.trailing_data
        return bytes(data)


_SERVER = f"trioport-proxy/{__version__}"


def _http_date() -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())


async def _next_event(conn: h11.Connection, stream: trio.abc.ReceiveStream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
            continue
        return event


async def send_response(
    conn: h11.Connection,
    stream: trio.abc.SendStream,
    response: WebResponse,
    *,
    close: bool = False,
    head: bool = False,
) -> None:
    """Send ``response`` with the hardening headers (headers only for a HEAD request)."""
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("server", _SERVER),
        ("date", _http_date()),
        ("cache-control", response.cache_control),
        *security_headers(response.csp),
        *response.headers,
    ]
    if close:
        headers.append(("connection", "close"))
    out = conn.send(h11.Response(status_code=response.status, headers=headers))
    if response.body and not head:  # a HEAD response has headers only (RFC 9110 §9.3.2)
        out += conn.send(h11.Data(data=response.body))
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)


async def _read_request(
    conn: h11.Connection, stream: trio.abc.ReceiveStream, *, first: bool
) -> HTTPRequest | None:
    """The next request, or None when the client is done (or idle too long)."""
    if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
        # The start of the next request: a keep-alive connection may idle a while.
        with trio.move_on_after(HEADER_TIMEOUT if first else IDLE_TIMEOUT) as scope:
            data = await stream.receive_some(_RECEIVE_SIZE)
        if scope.cancelled_caught or not data:
            return None
        conn.receive_data(data)
    with trio.fail_after(HEADER_TIMEOUT):
        event = await _next_event(conn, stream)
    if isinstance(event, h11.ConnectionClosed):
        return None
    assert isinstance(event, h11.Request)
    # h11 bounds only a head that is still incomplete; one that arrived whole in a
    # single read is measured here, so the limit does not depend on how TCP and
    # TLS cut the bytes.
    head_size = len(event.method) + len(event.target) + 12
    head_size += sum(len(name) + len(value) + 4 for name, value in event.headers)
    if head_size > MAX_HEADER_BYTES:
        raise HTTPError(
            431, "too_large", f"the request's headers are at most {MAX_HEADER_BYTES} bytes"
        )
    too_large = HTTPError(413, "too_large", f"a request body is at most {MAX_BODY_BYTES} bytes")
    for name, value in event.headers:
        if name == b"content-length" and int(value) > MAX_BODY_BYTES:
            raise too_large
    body = bytearray()
    with trio.fail_after(BODY_TIMEOUT):
        while True:
            part = await _next_event(conn, stream)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_BODY_BYTES:
                    raise too_large
            elif isinstance(part, h11.EndOfMessage):
                break
            elif isinstance(part, h11.ConnectionClosed):
                return None
    try:
        method = event.method.decode("ascii")
        target = event.target.decode("ascii")
    except UnicodeDecodeError:
        raise bad_request("the request line is not ASCII") from None
    headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
    return HTTPRequest(method, target, headers, bytes(body))


async def _linger(stream: trio.abc.ReceiveStream) -> None:
    """Read and drop what the client still sends, briefly, before the connection closes.

    Closing a socket with unread data resets the connection, and the client may
    then lose the error answer it was just sent (a lingering close, as Apache's).
    """
    dropped = 0
    with trio.move_on_after(LINGER_SECONDS):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while dropped < LINGER_BYTES and (data := await stream.receive_some(_RECEIVE_SIZE)):
                dropped += len(data)


async def serve_https(stream: trio.abc.Stream, app: App, peer: Address | None) -> None:
    """Serve HTTP/1.1 on an established (TLS) stream until the client is done.

    Requests are read whole (headers within :data:`HEADER_TIMEOUT`, at most
    :data:`MAX_HEADER_BYTES` of them; a body within :data:`BODY_TIMEOUT`, at most
    :data:`MAX_BODY_BYTES`), answered in order, keep-alive. A request the app
    wants to upgrade (the terminal websocket) hands the connection over for good.

    Raises:
        trio.BrokenResourceError: the stream died.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    first = True
    while True:
        error: WebResponse | None = None
        try:
            request = await _read_request(conn, stream, first=first)
        except h11.RemoteProtocolError as exc:
            error = WebResponse.error(exc.error_status_hint, "bad_request", str(exc))
        except HTTPError as exc:
            error = WebResponse.error(exc.status, exc.kind, exc.message)
        except trio.TooSlowError:
            error = WebResponse.error(408, "timeout", "the request took too long to arrive")
        if error is not None:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(h11.LocalProtocolError):
                    await send_response(conn, stream, error, close=True)
                await _linger(stream)
            return
        if request is None:
            return
        first = False
        request = attrs.evolve(request, peer=peer)
        if app.wants_upgrade(request):
            await app.upgrade(request, HTTPLink(conn, stream))
            return
        response = await app.handle(request)
        await send_response(conn, stream, response, head=request.method == "HEAD")
        if h11.MUST_CLOSE in (conn.our_state, conn.their_state):
            return
        conn.start_next_cycle()


@attrs.frozen
class _HandlerApp:
    """An app of one ``handle(method, target, body, peer)`` function (tsh's endpoints)."""

    handle_fn: Callable[[str, str, bytes, Address | None], Awaitable[Response]]

    async def handle(self, request: HTTPRequest) -> WebResponse:
        answer = await self.handle_fn(request.method, request.target, request.body, request.peer)
        return WebResponse.of(answer)

    def wants_upgrade(self, request: HTTPRequest) -> bool:
        return False

    async def upgrade(self, request: HTTPRequest, link: HTTPLink) -> None:
        raise AssertionError("no upgrades here")


async def serve_connection(
    stream: trio.abc.Stream,
    handle: Callable[[str, str, bytes, Address | None], Awaitable[Response]],
    peer: Address | None,
) -> None:
    """Serve HTTP/1.1 on ``stream`` with one handler function (no web UI).

    Raises:
        trio.BrokenResourceError: the stream died.
    """
    await serve_https(stream, _HandlerApp(handle), peer)


def _peer(stream: trio.SocketStream) -> Address | None:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return None
    return Address(str(host), int(port))


async def serve_web(
    listeners: list[trio.SocketListener],
    ssl_context: Any,
    api: WebAPI,
    *,
    static_dir: str | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept HTTPS connections on ``listeners`` until cancelled.

    Serves tsh's endpoints (``api``) and the web UI over the same state
    (:class:`~.webui.WebUI`: its JSON API, the terminal websocket, static files
    from ``static_dir`` or the package's ``webui/static``). Calls
    ``task_status.started(addresses)`` once listening. A failing connection (a bad
    handshake, a broken stream, a bug in a handler) is logged and closed; it never
    reaches the listener loop.
    """
    from .webui import WebUI  # the web UI builds on this module's loop

    async def one(tcp: trio.SocketStream) -> None:
        peer = _peer(tcp)
        stream = trio.SSLStream(tcp, ssl_context, server_side=True, https_compatible=True)
        try:
            with trio.move_on_after(HANDSHAKE_TIMEOUT) as scope:
                await stream.do_handshake()
            if scope.cancelled_caught:
                log.info("%s: TLS handshake timed out", peer)
                return
            await serve_https(stream, ui, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("%s: connection ended: %s", peer, exc.__cause__ or exc)
        except Exception:
            log.exception("%s: connection crashed", peer)
        finally:
            await trio.aclose_forcefully(stream)

    addresses = [listener.socket.getsockname()[:2] for listener in listeners]
    async with trio.open_nursery() as nursery:
        ui = WebUI(api, static_dir=static_dir)
        await nursery.start(ui.run)
        await nursery.start(trio.serve_listeners, one, listeners)
        task_status.started(addresses)
