"""The terminal websocket: a shell on a node, in the browser, over the proxy's HTTPS port.

``GET /v1/webapi/terminal?node=NODE&login=LOGIN&cols=C&rows=R[&sid=SID]`` with an
upgrade to a websocket (RFC 6455) and the subprotocol :data:`SUBPROTOCOL`. The
upgrade is answered by the HTTPS loop's h11 connection (``101 Switching
Protocols``), and the bytes that follow go to wsproto on the same TLS stream.

**Before the upgrade** (otherwise 403, or 400/426 for a malformed handshake,
and the connection closes; nothing is opened):

- ``Origin`` must be the proxy's own origin (``https://`` + Host): a page of
  another site cannot open a terminal with the user's cookie (cross-site
  websocket hijacking);
- ``Sec-WebSocket-Protocol`` must offer :data:`SUBPROTOCOL` and
  ``bearer.<csrf_token>`` (a browser cannot set Authorization on a websocket);
  the answer names only :data:`SUBPROTOCOL`;
- the session cookie must name a live web session whose CSRF token is the bearer
  token (constant-time compare). The cookie alone never suffices.

**The protocol** (version 1, JSON text messages):

- browser to proxy: ``{"type":"input","data":"..."}``,
  ``{"type":"resize","cols":C,"rows":R}``, ``{"type":"close"}``;
- proxy to browser: ``{"type":"session","sid":...,"node":...,"login":...}`` once
  the shell runs, then ``{"type":"output","data":"..."}`` (the node's bytes
  decoded as UTF-8 incrementally, errors replaced), and at the end
  ``{"type":"close","reason":"...","exit_status":N}`` followed by a websocket
  close 1000. A refusal (no such node, login not allowed, node down) is such a
  close message with the reason, before any ``session``.

**Limits.** A message (all its frames) is at most :data:`MAX_MESSAGE_BYTES`, else
close 1009; binary messages close 1003 and malformed JSON 1008. wsproto closes
an unmasked client frame with 1002 and invalid UTF-8 with 1007. The proxy pings
every :data:`PING_INTERVAL` seconds and closes (1001) a client silent for
:data:`IDLE_TIMEOUT`; a client that does not read what is sent within
:data:`SEND_TIMEOUT` is cut off. Logging out (or the session expiring) closes the
terminal.

**The node side.** The proxy routes the node as it does for ``tsh``
(:class:`..router.NodeRouter`: her roles must let her see it), dials it, checks
its host certificate (the cluster's host CA, service role ``node``, its UUID among
the principals) and logs in as LOGIN with the web session's certificate; the node
decides whether the login is allowed, starts the shell on a pty and records the
session like any other. With ``sid`` the channel joins that session instead
(environment ``TRIOPORT_SESSION``; :mod:`trioport.roles.node.sessions`).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import logging
from typing import TYPE_CHECKING, Any

import attrs
import trio
import wsproto
import wsproto.events as wse
from wsproto.utilities import generate_accept_token

from trioport.authclient import AuthServiceUnavailable
from trioport.config import NODE_PORT
from trioport.errors import (
    AccessDenied,
    AuthenticationFailed,
    HostKeyNotVerifiable,
    NotFound,
    TrioportError,
)
from trioport.ssh import ChannelStream, KeySigner, SSHConnection, connect
from trioport.sshproto import ConnectionConfig, Role
from trioport.sshproto import events as ev
from trioport.sshproto.certs import ServiceRole

from ..client import host_verifier
from ..nodedial import DialFailed, dial_node
from ..router import Route, Target
from ..sessions_client import JOIN_ENV, check_sid
from .http import HTTPRequest, WebResponse
from .sessions import WebSession

if TYPE_CHECKING:
    from ..web import HTTPLink
    from .app import WebUI

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "PING_INTERVAL",
    "SEND_TIMEOUT",
    "SUBPROTOCOL",
    "TERMINAL_PATH",
    "Terminals",
]

log = logging.getLogger("trioport.proxy.terminal")

TERMINAL_PATH = "/v1/webapi/terminal"
#: The protocol's name and version.
SUBPROTOCOL = "trioport.terminal.v1"
_BEARER = "bearer."
#: The largest message (all frames together) the browser may send.
MAX_MESSAGE_BYTES = 64 * 1024
#: Seconds between pings; a client silent (no message, no pong) this long is cut off.
PING_INTERVAL = 30.0
IDLE_TIMEOUT = 90.0
#: Seconds a send to the browser may take.
SEND_TIMEOUT = 30.0
#: Seconds to reach a node and log in.
DIAL_TIMEOUT = 10.0
#: Seconds to wait for the browser's close frame after ours.
CLOSE_WAIT = 2.0
#: Bytes read and dropped at most while waiting for the browser's close frame.
_MAX_DRAIN = 4 * 1024 * 1024
#: Bytes read from the node at once.
_READ_SIZE = 32 * 1024
_MAX_SIZE = 1000
_TERM = "xterm-256color"
_AUDIT_SESSION_REJECTED = "T1006W"

# RFC 6455 §7.4.1 close codes.
NORMAL = 1000
GOING_AWAY = 1001
UNSUPPORTED = 1003
POLICY = 1008
TOO_BIG = 1009
INTERNAL = 1011


class _Closed(Exception):
    """The websocket is closing (``code``), or already closed."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@attrs.frozen
class TerminalRequest:
    """What the browser asked for: node, login, size, and a session to join."""

    node: str
    login: str
    cols: int
    rows: int
    sid: str | None


def _size(text: str | None, name: str, default: int) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or not 1 <= int(text) <= _MAX_SIZE:
        raise ValueError(f"{name}: expected a number from 1 to {_MAX_SIZE}")
    return int(text)


def parse_terminal_request(request: HTTPRequest) -> TerminalRequest:
    """The query of a terminal request.

    Raises:
        ValueError: a missing or malformed argument (the message says which).
    """
    node = (request.arg("node") or "").strip()
    login = (request.arg("login") or "").strip()
    if not node or len(node) > 512:
        raise ValueError("node: name the node to connect to")
    if not login or len(login) > 256:
        raise ValueError("login: name the login to connect as")
    sid = request.arg("sid") or None
    if sid is not None:
        try:
            check_sid(sid)
        except TrioportError as exc:
            raise ValueError(f"sid: {exc}") from None
    return TerminalRequest(
        node,
        login,
        _size(request.arg("cols"), "cols", 80),
        _size(request.arg("rows"), "rows", 24),
        sid,
    )


def _dimension(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_SIZE


def _handshake_key(request: HTTPRequest) -> str | None:
    key = request.header("sec-websocket-key")
    if not key:
        return None
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key.strip() if len(raw) == 16 else None


class WebSocket:
    """One server-side websocket over a stream (wsproto), sends serialised by a lock."""

    def __init__(self, stream: trio.abc.Stream, trailing: bytes) -> None:
        self.stream = stream
        self.conn = wsproto.Connection(wsproto.ConnectionType.SERVER, trailing_data=trailing)
        self._send_lock = trio.Lock()
        self._parts: list[str] = []
        self._size = 0
        self.close_code: int | None = None
        self.peer_closed = trio.Event()

    async def _send(self, event: wse.Event) -> None:
        async with self._send_lock:
            if self.conn.state not in (
                wsproto.ConnectionState.OPEN,
                wsproto.ConnectionState.REMOTE_CLOSING,
            ):
                raise _Closed(self.close_code or GOING_AWAY)
            data = self.conn.send(event)
            # A frame is sent whole or the connection is given up: a cancelled
            # send_all would leave half a TLS record, and no close frame could
            # follow it. Only the send deadline can cut it short.
            with trio.CancelScope(shield=True), trio.move_on_after(SEND_TIMEOUT) as scope:
                await self.stream.send_all(data)
            if scope.cancelled_caught:
                raise trio.BrokenResourceError("the browser does not read what it is sent")

    async def send_json(self, message: dict[str, Any]) -> None:
        await self._send(wse.TextMessage(data=json.dumps(message, ensure_ascii=False)))

    async def ping(self) -> None:
        await self._send(wse.Ping(payload=b"trioport"))

    async def close(self, code: int, reason: str = "") -> None:
        """Send our close frame (once); then wait a little for the browser's."""
        if self.close_code is None:
            self.close_code = code
            try:
                await self._send(wse.CloseConnection(code=code, reason=reason[:120]))
            except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
                return
        # Read (and drop) what the browser still sends until its close frame: closing
        # a socket with unread data would reset the connection, and the browser
        # might never see our close frame and its code.
        drained = 0
        with trio.move_on_after(CLOSE_WAIT):
            while not self.peer_closed.is_set() and drained < _MAX_DRAIN:
                try:
                    data = await self.stream.receive_some(64 * 1024)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                drained += len(data)
                self.conn.receive_data(data)
                for event in self.conn.events():
                    if isinstance(event, wse.CloseConnection):
                        self.peer_closed.set()

    async def receive(self) -> dict[str, Any]:
        """The next message from the browser, as a JSON object.

        Raises:
            _Closed: the browser closed, broke the protocol, or went silent.
        """
        while True:
            for event in self.conn.events():
                message = await self._on_event(event)
                if message is not None:
                    return message
            with trio.move_on_after(IDLE_TIMEOUT) as scope:
                data = await self.stream.receive_some(64 * 1024)
            if scope.cancelled_caught:
                raise _Closed(GOING_AWAY, "the browser went silent")
            if not data:
                self.peer_closed.set()
                raise _Closed(1006, "the connection was closed")
            self.conn.receive_data(data)

    async def _on_event(self, event: wse.Event) -> dict[str, Any] | None:
        if isinstance(event, wse.CloseConnection):
            if self.conn.state is wsproto.ConnectionState.REMOTE_CLOSING:
                # The browser closed: answer with the same code (RFC 6455 §5.5.1).
                if self.close_code is None:
                    self.close_code = event.code
                    await self._send(event.response())
                self.peer_closed.set()
                raise _Closed(event.code, event.reason or "")
            if self.conn.state is wsproto.ConnectionState.CLOSED:
                self.peer_closed.set()
                raise _Closed(event.code, event.reason or "")
            # wsproto found a protocol error (unmasked frame: 1002, bad UTF-8: 1007).
            raise _Closed(event.code, event.reason or "protocol error")
        if isinstance(event, wse.Ping):
            await self._send(event.response())
            return None
        if isinstance(event, wse.Pong):
            return None
        if isinstance(event, wse.BytesMessage):
            raise _Closed(UNSUPPORTED, "binary messages are not part of this protocol")
        if isinstance(event, wse.TextMessage):
            self._size += len(event.data.encode("utf-8"))
            if self._size > MAX_MESSAGE_BYTES:
                raise _Closed(TOO_BIG, f"a message is at most {MAX_MESSAGE_BYTES} bytes")
            self._parts.append(event.data)
            if not event.message_finished:
                return None
            text = "".join(self._parts)
            self._parts, self._size = [], 0
            try:
                message = json.loads(text)
            except (ValueError, RecursionError):
                raise _Closed(POLICY, "a message is not JSON") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise _Closed(POLICY, "a message is a JSON object with a type")
            return message
        return None


class _Refused(Exception):
    """The node could not be reached or refused us: the reason is for the browser."""


class Terminals:
    """Serves terminal websockets for a :class:`~.app.WebUI`."""

    def __init__(self, ui: WebUI) -> None:
        self.ui = ui

    # --- the handshake -------------------------------------------------------------------

    def _check(self, request: HTTPRequest) -> tuple[WebSession, TerminalRequest, str] | WebResponse:
        """The session, the terminal asked for and the accept token; or the refusal."""
        upgrade = [v.lower() for v in request.header_values("upgrade")]
        connection = [v.lower() for v in request.header_values("connection")]
        key = _handshake_key(request)
        if "websocket" not in upgrade or "upgrade" not in connection or key is None:
            return WebResponse.error(
                400, "bad_request", "expected a websocket handshake (RFC 6455 §4.1)"
            )
        if request.header("sec-websocket-version") != "13":
            return WebResponse.error(
                426, "bad_request", "only websocket version 13 is spoken here"
            ).with_headers(("sec-websocket-version", "13"))
        origin = request.header("origin")
        if origin is None or origin != request.own_origin:
            return WebResponse.error(403, "csrf", "the websocket's Origin is not this proxy")
        offered = request.header_values("sec-websocket-protocol")
        if SUBPROTOCOL not in offered:
            return WebResponse.error(403, "bad_request", f"offer the subprotocol {SUBPROTOCOL}")
        bearers = [p.removeprefix(_BEARER) for p in offered if p.startswith(_BEARER)]
        if not bearers:
            return WebResponse.error(403, "csrf", "no bearer token in Sec-WebSocket-Protocol")
        session = self.ui.session_of(request)
        if session is None:
            return WebResponse.error(
                403, "authentication_failed", "not logged in, or the web session has expired"
            )
        if not session.check_csrf(bearers[0]):
            return WebResponse.error(403, "csrf", "the bearer token is not this session's")
        try:
            wanted = parse_terminal_request(request)
        except ValueError as exc:
            return WebResponse.error(400, "bad_request", str(exc))
        return session, wanted, generate_accept_token(key.encode("ascii"))

    async def serve(self, request: HTTPRequest, link: HTTPLink) -> None:
        """Answer a terminal request on ``link``; returns when the terminal ends."""
        checked = self._check(request)
        if isinstance(checked, WebResponse):
            log.info("terminal refused for %s: %s", request.peer, checked.body[:200])
            await link.refuse(checked)
            return
        session, wanted, accept = checked
        trailing = await link.switch(
            [
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-accept", accept),
                ("sec-websocket-protocol", SUBPROTOCOL),
            ]
        )
        ws = WebSocket(link.stream, trailing)
        scope = trio.CancelScope()
        session.terminals.add(scope)
        code, reason, status = NORMAL, "", None
        try:
            with scope:
                code, reason, status = await self._run(ws, session, wanted, request)
        except _Closed as exc:
            code, reason = exc.code, exc.reason
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("terminal of %s: the browser's connection broke: %s", session.user, exc)
            return
        finally:
            session.terminals.discard(scope)
        if scope.cancelled_caught:
            code, reason = NORMAL, "the web session ended"
        with trio.move_on_after(CLOSE_WAIT + SEND_TIMEOUT) as done:
            done.shield = True
            try:
                if code == NORMAL:
                    await ws.send_json({"type": "close", "reason": reason, "exit_status": status})
                await ws.close(code if code not in (1005, 1006) else NORMAL, reason)
            except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # --- the terminal ----------------------------------------------------------------------

    async def _run(
        self, ws: WebSocket, session: WebSession, wanted: TerminalRequest, request: HTTPRequest
    ) -> tuple[int, str, int | None]:
        """Run the terminal; returns the close code, reason and exit status."""
        state = self.ui.state
        try:
            route = await state.router.route(
                session.user, Target(wanted.node, NODE_PORT), login=wanted.login
            )
        except (NotFound, AccessDenied) as exc:
            # As on the SSH port: a refused route is a session.rejected audit event.
            await state.emit(
                _AUDIT_SESSION_REJECTED,
                user=session.user,
                login=wanted.login,
                addr_remote=str(request.peer) if request.peer else None,
                success=False,
                error=str(exc),
                target=wanted.node[:256],
                reason="access denied" if isinstance(exc, AccessDenied) else "not found",
                via="web",
            )
            return NORMAL, str(exc), None
        except (TrioportError, ValueError) as exc:
            return NORMAL, str(exc), None
        try:
            # The node learns the browser's address from the proxy's signed line.
            stream = await dial_node(
                route,
                client_addr=str(request.peer) if request.peer else None,
                key=state.identity.key,
                certificate=state.identity.certificate.blob,
                clock=state.clock,
                timeout=DIAL_TIMEOUT,
            )
        except DialFailed as exc:
            state.router.forget()
            return NORMAL, str(exc), None
        reasons: list[str] = []
        config = ConnectionConfig(
            role=Role.CLIENT,
            verify_host_key=host_verifier(
                state.host_cas,
                state.cluster_name,
                ServiceRole.NODE,
                principal=route.node.host_id,
                clock=state.clock,
                reasons=reasons,
            ),
        )
        signer = KeySigner(session.key, certificate=session.certificate.blob)
        try:
            async with connect(
                route.dial.host,
                route.dial.port,
                username=wanted.login,
                signers=[signer],
                config=config,
                stream=stream,
                connect_timeout=DIAL_TIMEOUT,
            ) as conn:
                return await self._shell(ws, session, wanted, route, conn)
        except HostKeyNotVerifiable:
            why = reasons[-1] if reasons else "its host certificate is not valid"
            return NORMAL, f"node {route.node.hostname!r} is not trusted: {why}", None
        except AuthenticationFailed:
            return (
                NORMAL,
                f"node {route.node.hostname!r} refused login {wanted.login!r}"
                " (is it among the logins your roles allow?)",
                None,
            )
        except _Refused as exc:
            return NORMAL, str(exc), None
        except trio.TooSlowError:
            return NORMAL, f"node {route.node.hostname!r} did not answer in time", None
        except TrioportError as exc:
            return NORMAL, f"the connection to node {route.node.hostname!r} failed: {exc}", None

    async def _shell(
        self,
        ws: WebSocket,
        session: WebSession,
        wanted: TerminalRequest,
        route: Route,
        conn: SSHConnection,
    ) -> tuple[int, str, int | None]:
        chan = await conn.open_session()
        if wanted.sid is not None:
            await chan.request(ev.Env(name=JOIN_ENV, value=wanted.sid))
        pty = ev.PtyRequest(term=_TERM, width_chars=wanted.cols, height_rows=wanted.rows)
        if not await chan.request(pty):
            raise _Refused(f"node {route.node.hostname!r} refused a terminal (pty) for this login")
        before = set() if wanted.sid else await self._my_sessions(session, route)
        if not await chan.request(ev.Shell()):
            raise _Refused(f"node {route.node.hostname!r} refused to start a shell")
        sid = wanted.sid or await self._new_sid(session, route, wanted.login, before)
        await ws.send_json(
            {
                "type": "session",
                "sid": sid,
                "node": route.node.hostname,
                "node_id": route.node.host_id,
                "login": wanted.login,
            }
        )
        log.info(
            "terminal: %s on %s as %r (session %s)",
            session.user,
            route.node.hostname,
            wanted.login[:64],
            sid,
        )
        result: list[tuple[int, str, int | None]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._to_browser, ws, chan, nursery.cancel_scope, result)
            nursery.start_soon(self._from_browser, ws, chan, nursery.cancel_scope, result)
            nursery.start_soon(self._pinger, ws)
        return result[0] if result else (NORMAL, "ended", chan.exit_status)

    async def _my_sessions(self, session: WebSession, route: Route) -> set[str]:
        try:
            client = await self.ui.store.auth_client(session)
            found = await client.list_sessions(state="active")
        except (TrioportError, trio.BrokenResourceError):
            return set()
        return {s.metadata.name for s in found}

    async def _new_sid(
        self, session: WebSession, route: Route, login: str, before: set[str]
    ) -> str | None:
        """The id the node gave the shell just started (it reports it to auth)."""
        with trio.move_on_after(3.0):
            while True:
                try:
                    client = await self.ui.store.auth_client(session)
                    found = await client.list_sessions(state="active")
                except (TrioportError, trio.BrokenResourceError, AuthServiceUnavailable):
                    return None
                mine = [
                    s
                    for s in found
                    if s.metadata.name not in before
                    and s.spec.user == session.user
                    and s.spec.node == route.node.host_id
                    and s.spec.login == login
                ]
                if mine:
                    return max(mine, key=lambda s: s.spec.created).metadata.name
                await trio.sleep(0.1)
        return None

    async def _to_browser(
        self,
        ws: WebSocket,
        chan: ChannelStream,
        scope: trio.CancelScope,
        result: list[tuple[int, str, int | None]],
    ) -> None:
        """Send the node's output until the channel ends; then say how it ended."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def browser_gone(code: int, reason: str) -> None:
            result.append((code, reason, None))
            scope.cancel()

        async def pump(source: trio.abc.ReceiveStream) -> None:
            while True:
                try:
                    data = await source.receive_some(_READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                text = decoder.decode(data)
                if not text:
                    continue
                try:
                    await ws.send_json({"type": "output", "data": text})
                except _Closed as exc:
                    browser_gone(exc.code, exc.reason)
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    browser_gone(1006, str(exc))
                    return

        async with trio.open_nursery() as outputs:
            outputs.start_soon(pump, chan)
            outputs.start_soon(pump, chan.stderr)
        tail = decoder.decode(b"", final=True)
        try:
            if tail:
                await ws.send_json({"type": "output", "data": tail})
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            browser_gone(1006, "the browser's connection broke")
            return
        with trio.move_on_after(5):
            await chan.wait_closed()
        status = chan.exit_status
        if status is None and chan.exit_signal is not None:
            reason = f"killed by signal {chan.exit_signal.name}"
        else:
            reason = "exited"
        result.append((NORMAL, reason, status))
        scope.cancel()

    async def _from_browser(
        self,
        ws: WebSocket,
        chan: ChannelStream,
        scope: trio.CancelScope,
        result: list[tuple[int, str, int | None]],
    ) -> None:
        """Pass the browser's keystrokes and resizes to the channel."""
        try:
            while True:
                try:
                    message = await ws.receive()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise _Closed(1006, str(exc)) from None
                await self._apply(chan, message)
        except _Closed as exc:
            result.append((exc.code, exc.reason, None))
            scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The channel to the node is gone; the output side reports the end.
            return

    async def _apply(self, chan: ChannelStream, message: dict[str, Any]) -> None:
        """Act on one message of the browser.

        Raises:
            _Closed: a malformed message (1008), or ``close``.
        """
        kind = message["type"]
        if kind == "input":
            data = message.get("data")
            if not isinstance(data, str):
                raise _Closed(POLICY, "input: data must be a string")
            try:
                raw = data.encode("utf-8")
            except UnicodeEncodeError:
                raise _Closed(POLICY, "input: data is not text") from None
            await chan.send_all(raw)
        elif kind == "resize":
            cols, rows = message.get("cols"), message.get("rows")
            if not (_dimension(cols) and _dimension(rows)):
                raise _Closed(POLICY, f"resize: cols and rows from 1 to {_MAX_SIZE}")
            assert isinstance(cols, int) and isinstance(rows, int)
            await chan.request(
                ev.WindowChange(width_chars=cols, height_rows=rows), want_reply=False
            )
        elif kind == "close":
            raise _Closed(NORMAL, "closed by the browser")
        else:
            raise _Closed(POLICY, f"unknown message type {kind[:32]!r}")

    async def _pinger(self, ws: WebSocket) -> None:
        while True:
            await trio.sleep(PING_INTERVAL)
            try:
                await ws.ping()
            except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
                return
