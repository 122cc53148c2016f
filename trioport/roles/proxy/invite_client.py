"""Finishing an invite from a terminal: the client side of the proxy's invite endpoints.

``tctl users add`` (and ``tctl users reset``) prints a link such as
``https://PROXY:3080/web/invite/TOKEN``. Until the web UI exists, ``tsh invite
LINK`` is how the invited user finishes it; this module is what it is built on:

- :func:`parse_invite_url` reads the link: the proxy's web address and the token.
- :func:`start_enrolment` (``GET /v1/webapi/users/password/token/TOKEN``) asks for
  a fresh TOTP secret, as an ``otpauth://`` URI and its base32 text. Each call
  makes a new secret and only the latest one counts, so call it once per attempt.
- :func:`complete_invite` (``PUT /v1/webapi/users/password/token``) sends the new
  password and a code from that secret. A code that does not match is refused
  and the link stays valid; after success the link is used up.

The HTTPS plumbing (TLS context, error mapping) is :mod:`.client`'s. The password
rule is the auth service's own (:func:`trioport.roles.auth.users.check_password`),
checked here first so that a too-short password costs no round trip. Neither the
password nor the code is ever logged.
"""

from __future__ import annotations

import re
import ssl
import urllib.parse
from typing import Literal

import attrs

from trioport.config import PROXY_WEB_PORT, Address, parse_addr
from trioport.errors import ConfigError

from .client import _request

__all__ = [
    "Enrolment",
    "InviteLink",
    "check_new_password",
    "complete_invite",
    "parse_invite_url",
    "start_enrolment",
]

#: The path of an invite or reset link, as :func:`trioport.roles.auth.users.invite_url`
#: writes it. Tokens are hex today; any URL-safe token is accepted.
_LINK_PATH = re.compile(r"^/web/(invite|reset)/([A-Za-z0-9_-]{8,256})/?$")


@attrs.frozen
class InviteLink:
    """An invite or reset link, taken apart.

    Attributes:
        web: the proxy's HTTPS address.
        token: the secret token in the link.
        kind: ``"invite"`` for a new user, ``"reset"`` for a password reset.
    """

    web: Address
    token: str = attrs.field(repr=False)
    kind: Literal["invite", "reset"] = "invite"


@attrs.frozen
class Enrolment:
    """What the user adds to an authenticator app.

    Attributes:
        user: the user name the link is for.
        secret: the TOTP secret in base32 (what an app asks for when typed in).
        uri: the same secret as an ``otpauth://totp/...`` URI (what a QR code holds).
    """

    user: str
    secret: str = attrs.field(repr=False)
    uri: str = attrs.field(repr=False)


def parse_invite_url(url: str) -> InviteLink:
    """Take apart a link that ``tctl users add`` or ``tctl users reset`` printed.

    Args:
        url: ``https://HOST[:PORT]/web/invite/TOKEN`` (or ``/web/reset/TOKEN``).
            The port defaults to 3080.

    Raises:
        ConfigError: it is not such a link (its message says what is wrong).
    """
    text = url.strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "https":
        raise ConfigError(
            "expected the link tctl printed: https://PROXY:3080/web/invite/TOKEN",
            key="URL",
        )
    match = _LINK_PATH.match(parts.path)
    if match is None or parts.query or parts.fragment:
        raise ConfigError(
            "the link's path is not /web/invite/TOKEN or /web/reset/TOKEN; copy the whole link",
            key="URL",
        )
    try:
        web = parse_addr(parts.netloc, PROXY_WEB_PORT, default_host="")
    except ValueError as exc:
        raise ConfigError(f"the link's host: {exc}", key="URL") from None
    if not web.host:
        raise ConfigError("the link has no usable host name", key="URL")
    kind: Literal["invite", "reset"] = "invite" if match.group(1) == "invite" else "reset"
    return InviteLink(web=web, token=match.group(2), kind=kind)


def check_new_password(password: str, again: str | None = None) -> str:
    """``password`` if the auth service will take it and it matches ``again``.

    Raises:
        ValueError: the two differ, or the password breaks the auth service's
            rule (12 to 128 characters); the message says which.
    """
    # The auth service's module (and its storage) load only when a password is set,
    # not for every tsh command.
    from trioport.roles.auth.users import check_password

    if again is not None and password != again:
        raise ValueError("the passwords do not match")
    return check_password(password)


def start_enrolment(link: InviteLink, ssl_context: ssl.SSLContext) -> Enrolment:
    """``GET /v1/webapi/users/password/token/TOKEN``: a fresh TOTP secret for the link.

    Raises:
        AuthenticationFailed: the link is unknown, expired or already used.
        ProxyUnavailable: the proxy cannot be reached or its certificate is not trusted.
        TrioportError: another refusal (rate limited, auth service down).
    """
    token = urllib.parse.quote(link.token, safe="")
    answer = _request("GET", link.web, f"/v1/webapi/users/password/token/{token}", ssl_context)
    try:
        return Enrolment(
            user=str(answer["user"]),
            secret=str(answer["totp_secret"]),
            uri=str(answer["totp_uri"]),
        )
    except KeyError as exc:
        raise ConfigError(
            f"the proxy's answer has no {exc.args[0]!r}: is this a trioport proxy?",
            key="URL",
        ) from None


def complete_invite(
    link: InviteLink, ssl_context: ssl.SSLContext, *, password: str, totp_code: str
) -> str:
    """``PUT /v1/webapi/users/password/token``: set the password, confirm a code.

    Returns:
        The user name the account was set up for.

    Raises:
        AuthenticationFailed: the code does not match the latest secret (the link
            stays valid: try again with a new code), or the link is no longer valid.
        TrioportError: the proxy refused the password (HTTP 400) or another refusal.
    """
    body = {
        "token": link.token,
        "password": password,
        "second_factor_token": "".join(totp_code.split()),
    }
    answer = _request("PUT", link.web, "/v1/webapi/users/password/token", ssl_context, body)
    return str(answer.get("user", ""))
