"""``tsh invite URL``: finish an invite (or a password reset) from the terminal.

An administrator's ``tctl users add alice --logins=...`` prints a link. The user
runs ``tsh invite LINK``: tsh asks for a new password twice, fetches a fresh TOTP
secret from the proxy and shows it as an ``otpauth://`` URI (most authenticator
apps take it pasted, or scanned once it is turned into a QR code) and as base32
text (what an app asks for when the secret is typed in), asks for a code from
the app, and sends password and code to the proxy. No QR code is drawn: that
would need a QR encoder, which trioport does not ship.

``--password-stdin`` reads the password once and then the code from standard
input, one per line, for scripts and tests; the code line is read only after the
secret has been printed, so the caller can compute it from that output.

The HTTPS calls are :mod:`trioport.roles.proxy.invite_client`'s; this module only
prompts and prints. ``docs/quickstart.md`` (step 3) describes it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from trioport.errors import AuthenticationFailed
from trioport.roles.proxy.client import ping
from trioport.roles.proxy.invite_client import (
    check_new_password,
    complete_invite,
    parse_invite_url,
    start_enrolment,
)
from trioport.tls import client_context

from ._common import fail

__all__ = ["CODE_ATTEMPTS", "PASSWORD_ATTEMPTS", "add_parser", "run"]

#: On a terminal: how many times a mistyped password pair or a wrong code is asked again.
PASSWORD_ATTEMPTS = 3
CODE_ATTEMPTS = 3


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``tsh invite`` on tsh's sub-command parsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "invite",
        help="finish an invite or password reset: set a password and enrol TOTP",
        description="Finish the invite (or password reset) link an administrator sent you:"
        " choose a password, add the TOTP secret to an authenticator app, confirm a code.",
    )
    p.add_argument("url", metavar="URL", help="the link tctl printed (https://PROXY/web/invite/…)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the proxy's HTTPS certificate (a self-signed proxy, during setup)",
    )
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the new password and then the TOTP code from standard input, one per line",
    )
    p.set_defaults(run=run)
    return p


def _say(text: str = "") -> None:
    print(text, flush=True)


def _read_line(what: str) -> str:
    line = sys.stdin.readline()
    if not line:
        fail(f"standard input ended before the {what}")
    return line.rstrip("\r\n")


def _interactive(args: argparse.Namespace) -> bool:
    return not args.password_stdin and sys.stdin.isatty()


def _new_password(args: argparse.Namespace) -> str:
    if not _interactive(args):
        password = _read_line("password")
        try:
            return check_new_password(password)
        except ValueError as exc:
            fail(str(exc))
    for attempt in range(PASSWORD_ATTEMPTS):
        password = getpass.getpass("New password (12 to 128 characters): ")
        again = getpass.getpass("Repeat the new password: ")
        try:
            return check_new_password(password, again)
        except ValueError as exc:
            if attempt + 1 == PASSWORD_ATTEMPTS:
                fail(str(exc))
            print(f"error: {exc}; try again", file=sys.stderr)
    raise AssertionError("unreachable")


def _code(args: argparse.Namespace) -> str:
    if not _interactive(args):
        return _read_line("TOTP code")
    return input("Enter the 6-digit code from your authenticator app: ")


def run(args: argparse.Namespace) -> int:
    """Run ``tsh invite``; errors are TrioportErrors for :func:`._common.run_main`."""
    link = parse_invite_url(args.url)
    ssl_context = client_context(insecure=bool(args.insecure))
    ping(link.web, ssl_context)  # an unreachable or untrusted proxy fails before any prompt
    password = _new_password(args)
    enrolment = start_enrolment(link, ssl_context)
    what = "an invite" if link.kind == "invite" else "a password reset"
    _say(f"Setting up user {enrolment.user!r} ({what}) at https://{link.web}.")
    _say("Add this account to your authenticator app: paste the URI, or type the secret.")
    _say(f"  URI:    {enrolment.uri}")
    _say(f"  Secret: {enrolment.secret}")
    attempts = CODE_ATTEMPTS if _interactive(args) else 1
    for attempt in range(attempts):
        try:
            user = complete_invite(link, ssl_context, password=password, totp_code=_code(args))
            break
        except AuthenticationFailed as exc:
            if attempt + 1 == attempts:
                raise
            print(f"error: {exc}; try the next code", file=sys.stderr)
    user = user or enrolment.user
    insecure = " --insecure" if args.insecure else ""
    _say(f"User {user!r} is ready. Log in with:")
    _say(f"  tsh login --proxy={link.web} --user={user}{insecure}")
    return 0
