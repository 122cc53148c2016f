"""The web UI's HTTP side: web sessions, the JSON API under ``/v1/webapi/``, static files.

:class:`WebUI` is the app the proxy's HTTPS loop serves (:func:`..web.serve_https`).
It answers, in order:

1. ``GET /`` with a redirect to ``/web/``, and ``/web/...`` with the front end
   (:mod:`.static`);
2. the terminal websocket, ``GET /v1/webapi/terminal`` with an upgrade
   (:mod:`.terminal`);
3. its own JSON endpoints (below), then tsh's (:class:`..web.WebAPI`).

**Rules for the JSON API** (docs/http-api.md, "Web UI"):

- A state-changing request (POST, PUT, DELETE) under ``/v1/webapi/`` whose
  ``Origin`` header is present and is not the proxy's own origin
  (``https://`` + the Host header) is refused, 403 ``csrf``. This covers the
  login and the invite endpoints too (login CSRF), and tsh, which sends no
  Origin, is unaffected.
- Endpoints of a web session need the session cookie of a live session, else 401
  ``authentication_failed``; their state-changing requests also need the
  session's CSRF token in ``X-CSRF-Token`` (compared in constant time), else 403
  ``csrf``.
- Credential and token endpoints are rate-limited per source address, like tsh's.
- What the user sees is asked of the auth service as her
  (:meth:`.sessions.WebSessionStore.auth_client`), so her roles decide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs
import trio

from trioport.authclient import APIError, AuthClient, AuthServiceUnavailable
from trioport.errors import (
    AuthenticationFailed,
    TrioportError,
)
from trioport.roles.auth._http import (
    MAX_TIME,
    HTTPError,
    Request,
    Router,
    bad_request,
    field_str,
    int_arg,
    time_arg,
)
from trioport.roles.auth.users import INVALID_INVITE
from trioport.sshproto.certs import Certificate
from trioport.sshproto.keys import PrivateKey, public_key_from_line

from .http import ERROR_STATUS, HTTPRequest, WebResponse
from .playback import qr_svg, recording_events
from .sessions import (
    SESSION_TTL,
    WebSession,
    WebSessionStore,
    clear_cookie,
    read_cookie,
    session_cookie,
)
from .static import StaticFiles
from .terminal import TERMINAL_PATH, Terminals

if TYPE_CHECKING:
    from ..web import HTTPLink, WebAPI

__all__ = ["LOGIN_FAILED", "WebUI"]

log = logging.getLogger("trioport.proxy.webui")

#: What a refused web login says (the auth service says the same for every cause).
LOGIN_FAILED = (
    "invalid user name, password or code (after 5 failed attempts the account is locked"
    " for 30 minutes; an administrator can unlock it)"
)
#: Recordings larger than this are not converted for the browser's player.
MAX_PLAYBACK_BYTES = 64 * 1024 * 1024
_FETCH_PIECE = 16 * 1024 * 1024
#: Recordings listed at most (newest first).
MAX_RECORDINGS = 500
_UNSAFE = frozenset({"POST", "PUT", "DELETE", "PATCH"})


@attrs.frozen
class _Policy:
    #: Rate-limited per source address.
    limited: bool = False
    #: Needs a live web session (and, when state-changing, its CSRF token).
    session: bool = True


_router: Router[_Policy] = Router()


def _route(
    method: str, template: str, *, limited: bool = False, session: bool = True
) -> Callable[[Any], Any]:
    return _router.route(method, template, _Policy(limited, session))


def error_response(exc: BaseException, what: str = "request") -> WebResponse:
    """The JSON error for an exception a handler raised."""
    if isinstance(exc, HTTPError):
        return WebResponse.error(exc.status, exc.kind, exc.message)
    if isinstance(exc, APIError):
        status = exc.status if 400 <= exc.status < 600 else 502
        return WebResponse.error(status, exc.kind, str(exc))
    for cls, status, kind in ERROR_STATUS:
        if isinstance(exc, cls):
            return WebResponse.error(status, kind, str(exc))
    if isinstance(exc, TrioportError):
        return WebResponse.error(500, "internal", str(exc))
    log.error("web UI: %s failed", what, exc_info=exc)
    return WebResponse.error(500, "internal", "internal error; see the proxy's log")


def _labels_arg(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise bad_request(f"labels: expected k=v,k2=v2, got {part[:32]!r}")
        out[key.strip()] = value.strip()
    return out


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _session_json(s: Any) -> dict[str, Any]:
    spec = s.spec
    return {
        "sid": s.metadata.name,
        "kind": spec.kind,
        "user": spec.user,
        "login": spec.login,
        "node": spec.node,
        "node_name": spec.node_hostname,
        "created": _iso(spec.created),
        "state": spec.state,
        "parties": [
            {"user": p.user, "remote_addr": p.remote_addr, "mode": "peer"} for p in spec.parties
        ],
    }


class WebUI:
    """The web UI over the proxy's state (see the module docstring).

    Args:
        api: tsh's endpoints (and, through ``api.state``, the proxy's state).
        static_dir: where the built front end is (default: the package's).
        store: the web sessions (default: a new store over ``api.state``).
    """

    def __init__(
        self,
        api: WebAPI,
        *,
        static_dir: str | None = None,
        store: WebSessionStore | None = None,
    ) -> None:
        self.api = api
        self.state = api.state
        self.limiter = api.limiter
        self.store = store or WebSessionStore(self.state)
        self.static = StaticFiles(static_dir)
        self.terminals = Terminals(self)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the session store (its auth connections, its sweeps) until cancelled."""
        await self.store.run(task_status=task_status)

    # --- the app protocol ------------------------------------------------------------

    def session_of(self, request: HTTPRequest) -> WebSession | None:
        """The live web session whose cookie ``request`` carries."""
        return self.store.find(read_cookie(request.header_values("cookie")))

    def wants_upgrade(self, request: HTTPRequest) -> bool:
        return request.path == TERMINAL_PATH and request.method == "GET"

    async def upgrade(self, request: HTTPRequest, link: HTTPLink) -> None:
        await self.terminals.serve(request, link)

    async def handle(self, request: HTTPRequest) -> WebResponse:
        """Answer one request; never raises for a caller's mistake."""
        path = request.path
        if path == "/" and request.method in ("GET", "HEAD"):
            return WebResponse(302, b"", "text/plain", headers=(("location", "/web/"),))
        if path == "/web" or path.startswith("/web/"):
            if request.method not in ("GET", "HEAD"):
                return WebResponse.error(405, "method_not_allowed", "use GET here")
            return await self.static.serve(path)
        if request.method in _UNSAFE and path.startswith("/v1/webapi/"):
            origin = request.header("origin")
            if origin is not None and origin != request.own_origin:
                return WebResponse.error(
                    403, "csrf", "a cross-origin request is refused (the Origin is not this proxy)"
                )
        try:
            route, req = _router.find(request.method, request.target, request.body)
        except HTTPError as exc:
            if exc.status != 404:
                return error_response(exc)
            return WebResponse.of(
                await self.api.handle(request.method, request.target, request.body, request.peer)
            )
        try:
            session: WebSession | None = None
            if route.policy.session:
                session = self.session_of(request)
                if session is None:
                    raise HTTPError(
                        401,
                        "authentication_failed",
                        "not logged in, or the web session has expired; log in again",
                    )
                if request.method in _UNSAFE and not session.check_csrf(
                    request.header("x-csrf-token")
                ):
                    raise HTTPError(403, "csrf", "missing or wrong X-CSRF-Token header")
            peer = request.peer
            if route.policy.limited and not self.limiter.allow(peer.host if peer else "unknown"):
                raise HTTPError(429, "rate_limited", "too many attempts; try again in a minute")
            result = await route.handler(self, request, req, session)
        except Exception as exc:
            return error_response(exc, f"{request.method} {path[:200]}")
        return result if isinstance(result, WebResponse) else WebResponse.json(result)

    # --- web sessions ------------------------------------------------------------------

    async def _start_session(
        self, request: HTTPRequest, user: str, key: PrivateKey, cert: Certificate, roles: list[str]
    ) -> WebResponse:
        old = self.session_of(request)
        if old is not None:  # rotation: a login never keeps an earlier session id
            self.store.end(old)
        session_id, session = self.store.create(
            user=user,
            key=key,
            certificate=cert,
            roles=roles,
            remote_addr=str(request.peer) if request.peer else None,
        )
        log.info("web session for %s (from %s)", user, request.peer)
        max_age = int(session.expires - self.store.clock())
        return WebResponse.json(
            session.document(), headers=(("set-cookie", session_cookie(session_id, max_age)),)
        )

    @_route("POST", "/v1/webapi/sessions/web", limited=True, session=False)
    async def _login(self, request: HTTPRequest, req: Request, _s: None) -> Any:
        body = req.json()
        code = body.get("second_factor_token", body.get("totp_code"))
        if not isinstance(code, str):
            raise bad_request("second_factor_token: expected the TOTP code as a string")
        user = field_str(body, "user")
        password = field_str(body, "password")
        key = PrivateKey.generate()
        client = await self.state.auth()
        try:
            result = await client.login(
                user,
                password,
                code,
                key.public,
                ttl=SESSION_TTL,
                remote_addr=str(request.peer) if request.peer else None,
            )
        except AuthenticationFailed:
            raise HTTPError(401, "access_denied", LOGIN_FAILED) from None
        cert = result.certificate
        return await self._start_session(
            request, cert.key_id, key, cert, list(result.user.spec.roles)
        )

    @_route("DELETE", "/v1/webapi/sessions/web")
    async def _logout(self, request: HTTPRequest, req: Request, session: WebSession) -> Any:
        self.store.end(session)
        log.info("web session of %s ended (logout)", session.user)
        return WebResponse.json({}, headers=(("set-cookie", clear_cookie()),))

    @_route("GET", "/v1/webapi/sessions/web")
    async def _whoami(self, request: HTTPRequest, req: Request, session: WebSession) -> Any:
        return session.document()

    # --- invites -----------------------------------------------------------------------

    @_route("GET", "/v1/webapi/users/password/token/{token}", limited=True, session=False)
    async def _invite(self, request: HTTPRequest, req: Request, _s: None) -> Any:
        client = await self.state.auth()
        try:
            enrolment = await client.start_enrolment(req.params["token"])
        except AuthenticationFailed as exc:
            raise _invite_gone(exc) from None
        uri = enrolment["uri"]
        return {
            "user": enrolment["user"],
            "totp": {"secret": enrolment["secret"], "uri": uri},
            "qr_svg": qr_svg(uri),
            # The names tsh's invite client reads.
            "totp_secret": enrolment["secret"],
            "totp_uri": uri,
        }

    @_route("PUT", "/v1/webapi/users/password/token", limited=True, session=False)
    async def _complete_invite(self, request: HTTPRequest, req: Request, _s: None) -> Any:
        body = req.json()
        code = body.get("second_factor_token", body.get("totp_code"))
        if not isinstance(code, str):
            raise bad_request("second_factor_token: expected the TOTP code as a string")
        token = field_str(body, "token")
        # A browser (it sends Origin with every PUT) lands logged in: the auth
        # service certifies a key made for a new web session. tsh's invite client
        # sends no Origin and gets the user's name only.
        key = PrivateKey.generate() if request.header("origin") is not None else None
        extra = {"public_key": key.public.openssh_line(), "ttl": SESSION_TTL} if key else {}
        client = await self.state.auth()
        try:
            reply = await client.call(
                "POST",
                f"/v1/invites/{_seg(token)}",
                {
                    "password": field_str(body, "password"),
                    "totp_code": code,
                    "remote_addr": str(request.peer) if request.peer else None,
                    **extra,
                },
            )
        except AuthenticationFailed as exc:
            if str(exc) == INVALID_INVITE:
                raise _invite_gone(exc) from None
            raise
        user = reply["user"]["metadata"]["name"]
        line = reply.get("certificate")
        cert = public_key_from_line(line) if isinstance(line, str) else None
        if key is not None and isinstance(cert, Certificate) and cert.key == key.public:
            roles = list(reply["user"].get("spec", {}).get("roles") or [])
            return await self._start_session(request, cert.key_id, key, cert, roles)
        return {"user": user}  # no csrf_token: the browser shows the login form

    # --- what the user may see, asked as her ---------------------------------------------

    async def _client(self, session: WebSession) -> AuthClient:
        try:
            return await self.store.auth_client(session)
        except AuthServiceUnavailable as exc:
            if "refused the certificate" in str(exc):
                self.store.end(session)
                raise HTTPError(
                    401, "authentication_failed", "the web session is no longer valid; log in"
                ) from None
            raise

    @_route("GET", "/v1/webapi/nodes")
    async def _nodes(self, request: HTTPRequest, req: Request, session: WebSession) -> Any:
        search = (req.arg("search") or "").strip().lower()
        wanted = _labels_arg(req.arg("labels"))
        client = await self._client(session)
        nodes = []
        for entry in await client.list_nodes():
            labels = {str(k): str(v) for k, v in dict(entry.get("labels") or {}).items()}
            node = {
                "name": str(entry.get("hostname", "")),
                "id": str(entry.get("host_id", "")),
                "addr": str(entry.get("addr", "")),
                "labels": labels,
            }
            if any(labels.get(k) != v for k, v in wanted.items()):
                continue
            if search:
                words = [node["name"], node["id"], node["addr"]]
                words += [f"{k}={v}" for k, v in labels.items()]
                if not any(search in w.lower() for w in words):
                    continue
            nodes.append(node)
        nodes.sort(key=lambda n: (n["name"].lower(), n["id"]))
        return {"nodes": nodes, "logins": session.logins}

    @_route("GET", "/v1/webapi/sessions/active")
    async def _active(self, request: HTTPRequest, req: Request, session: WebSession) -> Any:
        client = await self._client(session)
        found = await client.list_sessions(state="active")
        return {"sessions": [_session_json(s) for s in found]}

    @_route("GET", "/v1/webapi/recordings")
    async def _recordings(self, request: HTTPRequest, req: Request, session: WebSession) -> Any:
        client = await self._client(session)
        listing = (await client.list_recordings())["recordings"]
        listing = sorted(listing, key=lambda r: -float(r.get("completed") or 0))[:MAX_RECORDINGS]
        sessions = {s.metadata.name: s for s in await client.list_sessions()}
        out = []
        for rec in listing:
            sid = str(rec["sid"])
            item: dict[str, Any] = {
                "sid": sid,
                "size": int(rec.get("size") or 0),
                "end": rec.get("completed"),
            }
            tracked = sessions.get(sid)
            if tracked is not None:
                spec = tracked.spec
                start = spec.created.timestamp()
                end = spec.ended.timestamp() if spec.ended else item["end"]
                item.update(
                    user=spec.user,
                    login=spec.login,
                    node_name=spec.node_hostname or spec.node,
                    start=start,
                    end=end,
                )
            else:
                # The session's record is gone (kept 30 days after it ended). Its
                # recording's header would say, but reading it is an audited access
                # of the recording: the list does not do that behind her back.
                item.update({"user": None, "login": None, "node_name": None, "start": None})
            start, end = item.get("start"), item.get("end")
            item["duration_ms"] = (
                int(max(0.0, float(end) - float(start)) * 1000)
                if start is not None and end is not None
                else None
            )
            out.append(item)
        return {"recordings": out}

    @_route("GET", "/v1/webapi/recordings/{sid}")
    async def _recording(self, request: HTTPRequest, req: Request, session: WebSession) -> Any:
        client = await self._client(session)
        sid = req.params["sid"]
        blob = bytearray()
        while True:
            piece = await client.fetch_recording(sid, offset=len(blob), size=_FETCH_PIECE)
            blob += piece
            if len(piece) < _FETCH_PIECE:
                break
            if len(blob) > MAX_PLAYBACK_BYTES:
                raise HTTPError(
                    413, "too_large", "this recording is too large to play in the browser"
                )
        try:
            return recording_events(bytes(blob))
        except ValueError as exc:
            raise HTTPError(422, "bad_recording", f"the recording cannot be read: {exc}") from None

    @_route("GET", "/v1/webapi/events")
    async def _events(self, request: HTTPRequest, req: Request, session: WebSession) -> Any:
        now = self.store.clock()
        limit = int_arg(req.arg("limit"), "limit", 500)
        if limit is None or not 1 <= limit <= 10_000:
            raise bad_request("limit: 1 to 10000")
        since = time_arg(req.arg("from"), "from", max(0.0, now - 7 * 86400))
        until = time_arg(req.arg("to"), "to", min(MAX_TIME, now + 60))
        kinds = [t for v in req.query.get("type", []) for t in v.split(",") if t]
        user = req.arg("user") or None
        client = await self._client(session)
        # The auth service answers oldest first: ask for the most it gives, keep the newest.
        found = await client.search_events(since=since, until=until, events=kinds, limit=10_000)
        if user:
            found = [e for e in found if e.get("user") == user]
        found = found[-limit:]
        found.reverse()  # newest first
        return {"events": found}


def _invite_gone(exc: BaseException) -> HTTPError:
    # The kind stays the auth service's, which tsh's invite client reads.
    return HTTPError(
        410,
        "authentication_failed",
        "this invite link has expired or was already used; ask an administrator for a new one",
    )


def _seg(value: str) -> str:
    return quote(value, safe="")
