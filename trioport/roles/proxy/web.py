"""The proxy's HTTPS port (3080): the endpoints ``tsh`` needs, on Teleport's paths.

HTTP/1.1 (h11) over TLS (trio's ``SSLStream`` with the contexts of
:mod:`trioport.tls`), keep-alive, one request at a time per connection.
``docs/http-api.md`` (the proxy section) documents every endpoint:

- ``GET /v1/webapi/ping`` and ``GET /webapi/find``: the cluster's name, how users
  authenticate (local users, TOTP) and where the proxy's SSH port is. No
  authentication; nothing secret.
- ``POST /v1/webapi/ssh/certs``: ``tsh login``. The user's name, password, TOTP
  code, a public key and a TTL go to the auth service (``POST /v1/login``, as the
  proxy, with the caller's address for the audit log and the lockout); a user
  certificate and the cluster's host CA come back.
- ``GET /v1/webapi/users/password/token/TOKEN`` and
  ``PUT /v1/webapi/users/password/token``: finishing an invite (TOTP enrolment
  data, then password and a confirming code).

Every endpoint that takes a credential or a token is rate-limited per source
address (Teleport's limits for unauthenticated endpoints: 20 a minute, bursts of
40), on top of the auth service's own per-user lockout. Bodies are at most
:data:`MAX_BODY_BYTES`; headers must arrive within :data:`HEADER_TIMEOUT` and the
TLS handshake within :data:`HANDSHAKE_TIMEOUT` (Teleport's read deadlines); an idle
keep-alive connection closes after :data:`IDLE_TIMEOUT`. Responses are
``no-store`` and carry HSTS and the usual hardening headers. Passwords and codes
are never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import h11
import trio

from trioport import __version__
from trioport.authclient import APIError, AuthServiceUnavailable
from trioport.config import Address
from trioport.errors import (
    AccessDenied,
    AuthenticationFailed,
    KeyFormatError,
    NotFound,
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

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "HEADER_TIMEOUT",
    "IDLE_TIMEOUT",
    "LOGIN_BURST",
    "LOGIN_RATE_PER_MINUTE",
    "MAX_BODY_BYTES",
    "SECURITY_HEADERS",
    "WebAPI",
    "serve_web",
]

log = logging.getLogger("trioport.proxy.web")

#: Largest request body (a login is a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024
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

#: Sent with every response.
SECURITY_HEADERS = (
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
)


@attrs.frozen
class _Policy:
    #: Rate-limited per source address.
    limited: bool = False


_router: Router[_Policy] = Router()


def _route(method: str, template: str, *, limited: bool = False) -> Callable[[Any], Any]:
    return _router.route(method, template, _Policy(limited))


#: Our errors as (HTTP status, kind), as the auth API reports them.
_ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (AuthenticationFailed, 401, "authentication_failed"),
    (AccessDenied, 403, "access_denied"),
    (NotFound, 404, "not_found"),
    (AuthServiceUnavailable, 503, "unavailable"),
    (KeyFormatError, 400, "bad_key"),
    (ValueError, 400, "bad_request"),
)


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
            for cls, status, kind in _ERRORS:
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


async def _next_event(conn: h11.Connection, stream: trio.abc.ReceiveStream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
            continue
        return event


async def _send(
    conn: h11.Connection, stream: trio.abc.SendStream, response: Response, *, close: bool = False
) -> None:
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("server", f"trioport-proxy/{__version__}"),
        ("date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())),
        *SECURITY_HEADERS,
    ]
    if close:
        headers.append(("connection", "close"))
    out = conn.send(h11.Response(status_code=response.status, headers=headers))
    if response.body:
        out += conn.send(h11.Data(data=response.body))
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)


async def _read_request(
    conn: h11.Connection, stream: trio.abc.ReceiveStream, *, first: bool
) -> tuple[str, str, bytes] | None:
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
        return event.method.decode("ascii"), event.target.decode("ascii"), bytes(body)
    except UnicodeDecodeError:
        raise bad_request("the request line is not ASCII") from None


async def serve_connection(
    stream: trio.abc.Stream,
    handle: Callable[[str, str, bytes, Address | None], Awaitable[Response]],
    peer: Address | None,
) -> None:
    """Serve HTTP/1.1 on an established (TLS) stream until the client is done.

    Raises:
        trio.BrokenResourceError: the stream died.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
    first = True
    while True:
        try:
            request = await _read_request(conn, stream, first=first)
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                error = Response.error(exc.error_status_hint, "bad_request", str(exc))
                await _send(conn, stream, error, close=True)
            return
        except HTTPError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                error = Response.error(exc.status, exc.kind, exc.message)
                await _send(conn, stream, error, close=True)
            return
        except trio.TooSlowError:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                error = Response.error(408, "timeout", "the request took too long to arrive")
                await _send(conn, stream, error, close=True)
            return
        if request is None:
            return
        first = False
        response = await handle(*request, peer)
        await _send(conn, stream, response)
        if h11.MUST_CLOSE in (conn.our_state, conn.their_state):
            return
        conn.start_next_cycle()


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
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept HTTPS connections on ``listeners`` until cancelled.

    Calls ``task_status.started(addresses)`` once listening. A failing connection
    (a bad handshake, a broken stream, a bug in a handler) is logged and closed;
    it never reaches the listener loop.
    """

    async def one(tcp: trio.SocketStream) -> None:
        peer = _peer(tcp)
        stream = trio.SSLStream(tcp, ssl_context, server_side=True, https_compatible=True)
        try:
            with trio.move_on_after(HANDSHAKE_TIMEOUT) as scope:
                await stream.do_handshake()
            if scope.cancelled_caught:
                log.info("%s: TLS handshake timed out", peer)
                return
            await serve_connection(stream, api.handle, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("%s: connection ended: %s", peer, exc.__cause__ or exc)
        except Exception:
            log.exception("%s: connection crashed", peer)
        finally:
            await trio.aclose_forcefully(stream)

    addresses = [listener.socket.getsockname()[:2] for listener in listeners]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, one, listeners)
        task_status.started(addresses)
