"""What the proxy's HTTPS loop hands to the web UI and gets back: requests and responses.

The loop itself (h11 over TLS, deadlines, size limits) is :mod:`trioport.roles.proxy.web`;
the auth API's :class:`~trioport.roles.auth._http.Response` has no room for extra
headers (cookies, a page's content type and policy), so the proxy's HTTPS port
answers with :class:`WebResponse`, and reads requests whole, headers included, as
:class:`HTTPRequest`.

Every response carries the hardening headers (:func:`security_headers`): HSTS,
``nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and a
Content-Security-Policy. Pages and static files get :data:`PAGE_CSP` (the policy the
web UI is written for: no inline script); JSON answers get the stricter
:data:`API_CSP` (a JSON document loads nothing). API answers are ``no-store``.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import attrs

from trioport.authclient import AuthServiceUnavailable
from trioport.config import Address
from trioport.errors import (
    AccessDenied,
    AuthenticationFailed,
    BackendUnavailable,
    KeyFormatError,
    NotFound,
)
from trioport.roles.auth._http import Response

__all__ = [
    "API_CSP",
    "ERROR_STATUS",
    "PAGE_CSP",
    "HTTPRequest",
    "WebResponse",
    "security_headers",
]

#: Our errors as (HTTP status, kind), as the auth API reports them; the proxy's
#: HTTPS endpoints (tsh's and the web UI's) answer with these. An auth service
#: that is unreachable, or whose own storage is, is 503: try again later.
ERROR_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (AuthenticationFailed, 401, "authentication_failed"),
    (AccessDenied, 403, "access_denied"),
    (NotFound, 404, "not_found"),
    (AuthServiceUnavailable, 503, "unavailable"),
    (BackendUnavailable, 503, "unavailable"),
    (KeyFormatError, 400, "bad_key"),
    (ValueError, 400, "bad_request"),
)

#: The policy of every page and static file (the contract the front end is built to).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self' wss:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
#: The policy of JSON answers: they load nothing, and may not be framed.
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def security_headers(csp: str) -> list[tuple[str, str]]:
    """The hardening headers every response carries, with content policy ``csp``."""
    return [
        ("strict-transport-security", "max-age=31536000; includeSubDomains"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("content-security-policy", csp),
    ]


@attrs.frozen
class HTTPRequest:
    """One request, read whole: method, target, headers (names lower-case), body, peer."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    peer: Address | None = None

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def arg(self, name: str) -> str | None:
        """The last value of query argument ``name``."""
        values = self.query.get(name)
        return values[-1] if values else None

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (the last one, if repeated)."""
        name = name.lower()
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    def header_values(self, name: str) -> list[str]:
        """Every comma-separated value of header ``name``, over all its lines."""
        name = name.lower()
        out: list[str] = []
        for key, value in self.headers:
            if key == name:
                out.extend(v.strip() for v in value.split(",") if v.strip())
        return out

    @property
    def own_origin(self) -> str | None:
        """``https://HOST`` for the Host the client asked for (our origin to it)."""
        host = self.header("host")
        return f"https://{host}" if host else None


@attrs.frozen
class WebResponse:
    """A response: status, body, content type, extra headers, content policy, caching."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    csp: str = API_CSP
    cache_control: str = "no-store"

    @classmethod
    def json(
        cls, data: object, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
    ) -> WebResponse:
        body = json.dumps(data, ensure_ascii=False).encode("utf-8")
        return cls(status, body, headers=headers)

    @classmethod
    def error(cls, status: int, kind: str, message: str) -> WebResponse:
        """The error shape every refusal has: ``{"error": {"kind", "message"}}``."""
        return cls.json({"error": {"kind": kind, "message": message}}, status)

    @classmethod
    def of(cls, response: Response) -> WebResponse:
        """The auth API plumbing's :class:`Response` as a web response."""
        return cls(response.status, response.body, response.content_type)

    def with_headers(self, *extra: tuple[str, str]) -> WebResponse:
        return attrs.evolve(self, headers=self.headers + tuple(extra))
