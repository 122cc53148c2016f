"""The auth API's HTTP plumbing: a small router, JSON helpers, h11 over a stream, a rate limiter.

Nothing here knows about identities or the auth service: :mod:`.api` registers its
handlers on a :class:`Router` with a policy object of its own, and
:func:`serve_http` runs HTTP/1.1 (keep-alive, one request at a time) over any trio
stream (an SSH channel, in practice) by calling back into it.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import h11
import trio

from trioport import __version__

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_JSON_BYTES",
    "HTTPError",
    "RateLimiter",
    "Request",
    "Response",
    "Router",
    "serve_http",
]

#: Largest JSON request body.
MAX_JSON_BYTES = 1024 * 1024
#: Largest request header block (h11's default; nginx allows 8 KiB, node.js 80 KiB).
MAX_HEADER_BYTES = 16 * 1024
#: Bytes asked of the stream per read.
_RECEIVE_SIZE = 64 * 1024

P = TypeVar("P")


class HTTPError(Exception):
    """A refusal with its HTTP status and error kind (bad JSON, no route, too large, ...)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def bad_request(message: str) -> HTTPError:
    """A 400 naming what is wrong with the request."""
    return HTTPError(400, "bad_request", message)


@attrs.frozen
class Response:
    """What a handler returns: a status, a body and its content type."""

    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, data: object, status: int = 200) -> Response:
        """A JSON response."""
        return cls(status, json.dumps(data, ensure_ascii=False).encode("utf-8"))

    @classmethod
    def error(cls, status: int, kind: str, message: str) -> Response:
        """The error shape every refusal has: ``{"error": {"kind", "message"}}``."""
        return cls.json({"error": {"kind": kind, "message": message}}, status)


@attrs.frozen
class Request:
    """A parsed request: path parameters come from the route template."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    params: dict[str, str]

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (an empty body is ``{}``).

        Raises:
            HTTPError: too large, not JSON, or not an object.
        """
        if not self.body:
            return {}
        if len(self.body) > MAX_JSON_BYTES:
            raise HTTPError(413, "too_large", f"a JSON body is at most {MAX_JSON_BYTES} bytes")
        try:
            data = json.loads(self.body)
        except (ValueError, RecursionError):
            raise bad_request("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise bad_request("the body must be a JSON object")
        return data

    def arg(self, name: str) -> str | None:
        """The last value of query argument ``name``."""
        values = self.query.get(name)
        return values[-1] if values else None


@attrs.frozen
class Route(Generic[P]):
    method: str
    template: str
    regex: re.Pattern[str]
    handler: Callable[..., Awaitable[Any]]
    policy: P


class Router(Generic[P]):
    """Routes ``METHOD /path/{param}`` to handlers, each with a policy the caller defines."""

    def __init__(self) -> None:
        self.routes: list[Route[P]] = []

    def route(self, method: str, template: str, policy: P) -> Callable[[Any], Any]:
        """Decorator: register ``handler`` for ``method`` and ``template``."""
        pattern = re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template))

        def register(handler: Any) -> Any:
            self.routes.append(Route(method, template, pattern, handler, policy))
            return handler

        return register

    def find(self, method: str, target: str, body: bytes) -> tuple[Route[P], Request]:
        """The route for a request, and the request with its path parameters.

        Raises:
            HTTPError: 404 for an unknown path, 405 for a known path and the wrong method.
        """
        url = urlsplit(target)
        allowed = []
        for route in self.routes:
            m = route.regex.fullmatch(url.path)
            if m is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            params = {k: unquote(v) for k, v in m.groupdict().items()}
            query = parse_qs(url.query, keep_blank_values=True)
            return route, Request(method, url.path, query, body, params)
        if allowed:
            raise HTTPError(405, "method_not_allowed", f"use {' or '.join(allowed)} here")
        raise HTTPError(404, "not_found", f"no such endpoint: {url.path[:200]}")


# --- JSON fields and query arguments ----------------------------------------------------


def field_str(body: Mapping[str, Any], name: str, default: str | None = None) -> str:
    """A required string field (or ``default``)."""
    value = body.get(name, default)
    if not isinstance(value, str):
        raise bad_request(f"{name}: expected a string")
    return value


def field_opt_str(body: Mapping[str, Any], name: str) -> str | None:
    """An optional string field (``null`` counts as absent)."""
    return None if body.get(name) is None else field_str(body, name)


def field_str_list(
    body: Mapping[str, Any], name: str, default: list[str] | None = None
) -> list[str]:
    """A list of strings (``default`` when absent or ``null``)."""
    value = body.get(name)
    if value is None:
        value = default
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{name}: expected a list of strings")
    return value


def field_opt_number(body: Mapping[str, Any], name: str) -> float | None:
    """An optional number (never a boolean)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"{name}: expected a number")
    return float(value)


def int_arg(text: str | None, name: str, default: int | None = None) -> int | None:
    """A query argument or path parameter as an integer."""
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise bad_request(f"{name}: expected an integer") from None


def time_arg(text: str | None, name: str, default: float) -> float:
    """A query argument as epoch seconds: a number, or an ISO 8601 time (UTC if naive)."""
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise bad_request(f"{name}: expected epoch seconds or an ISO 8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        value = moment.timestamp()
    # From 1970 to the end of year 9999: a time the audit log can have, and nothing
    # (inf, nan, year 1) that would make a search overflow or walk millennia.
    if not 0.0 <= value <= MAX_TIME:
        raise bad_request(f"{name}: expected a time between 1970 and 9999")
    return value


#: The last second of year 9999, the largest time a query argument may name.
MAX_TIME = 253402300799.0


# --- rate limiting ---------------------------------------------------------------------


class RateLimiter:
    """A token bucket per source address (Teleport's unauthenticated-endpoint limiter).

    Each source gets ``burst`` tokens, refilled at ``per_minute`` a minute; a
    request spends one. At most ``max_sources`` buckets are kept, least recently
    used dropped first (a dropped source starts again with a full bucket).
    """

    def __init__(
        self,
        *,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = trio.current_time,
        max_sources: int = 10_000,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self.max_sources = max_sources
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def allow(self, source: str) -> bool:
        """Spend a token of ``source``'s bucket; False when it is empty."""
        now = self.clock()
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed


# --- HTTP/1.1 over a stream (h11) -------------------------------------------------------


async def serve_http(
    stream: trio.abc.Stream,
    handle: Callable[[str, str, bytes], Awaitable[Response]],
    *,
    max_body: int,
) -> None:
    """Serve HTTP/1.1 requests on ``stream`` with ``handle`` until the peer is done.

    Requests are read whole (at most ``max_body`` bytes of body) and answered in
    order; the connection is kept alive unless either side asks to close it.
    A request h11 cannot parse gets a 400 and ends the stream.

    Raises:
        trio.BrokenResourceError: the stream died.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    while True:
        try:
            request = await _read_request(conn, stream, max_body)
        except h11.RemoteProtocolError as exc:
            await _send_error(conn, stream, exc.error_status_hint, "bad_request", str(exc))
            return
        except HTTPError as exc:
            await _send_error(conn, stream, exc.status, exc.kind, exc.message)
            return
        if request is None:
            return
        response = await handle(*request)
        await _send_response(conn, stream, response, head=request[0] == "HEAD")
        if h11.MUST_CLOSE in (conn.our_state, conn.their_state):
            return
        conn.start_next_cycle()


async def _next_event(conn: h11.Connection, stream: trio.abc.ReceiveStream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
            continue
        return event


async def _read_request(
    conn: h11.Connection, stream: trio.abc.ReceiveStream, max_body: int
) -> tuple[str, str, bytes] | None:
    """The next request as (method, target, body), or None once the peer is done."""
    event = await _next_event(conn, stream)
    if isinstance(event, h11.ConnectionClosed):
        return None
    assert isinstance(event, h11.Request)
    too_large = HTTPError(413, "too_large", f"a request body is at most {max_body} bytes")
    for name, value in event.headers:
        if name == b"content-length" and int(value) > max_body:
            raise too_large
    body = bytearray()
    while True:
        part = await _next_event(conn, stream)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > max_body:
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
    return method, target, bytes(body)


async def _send_response(
    conn: h11.Connection,
    stream: trio.abc.SendStream,
    response: Response,
    *,
    close: bool = False,
    head: bool = False,
) -> None:
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("server", f"trioport-auth/{__version__}"),
        ("date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())),
    ]
    if close:
        headers.append(("connection", "close"))
    out = conn.send(h11.Response(status_code=response.status, headers=headers))
    if response.body and not head:  # a HEAD response has headers only (RFC 9110 §9.3.2)
        out += conn.send(h11.Data(data=response.body))
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)


async def _send_error(
    conn: h11.Connection, stream: trio.abc.SendStream, status: int, kind: str, message: str
) -> None:
    """Answer a request we cannot read, then close (only if a response may still go out)."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    try:
        await _send_response(conn, stream, Response.error(status, kind, message), close=True)
    except h11.LocalProtocolError:
        pass
