"""Fuzz ``authorized_keys`` and ``known_hosts`` lines and files.

The first input byte: bit 0 picks ``known_hosts`` over ``authorized_keys``, bit 1
reads the rest as a whole file instead of one line. The bytes are decoded as a
file reader would (UTF-8; Latin-1 if that fails, so every byte value still
reaches the parser).

Invariant: a line parses or raises ``KeyFormatError``; a whole file parses
without raising (broken lines are skipped, as OpenSSH does) or, with
``strict=True``, raises ``KeyFormatError``. A parsed line that can be written back
(``to_line``) must parse to the same entry, and asking it questions (does it allow
a pty, does ``from=`` match, which keys does known_hosts give this host) never
raises.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _fixtures import HOST_CERT, HOST_ED25519, USER_CERT, USER_ED25519
from _harness import main, tolerate_known_bugs

from trioport.errors import KeyFormatError
from trioport.sshproto.authfiles import (
    AuthorizedKey,
    KnownHost,
    find_authorized_keys,
    known_hosts_lookup,
    match_from,
    parse_authorized_key,
    parse_authorized_keys,
    parse_known_host,
    parse_known_hosts,
)

_HOSTS = (("fuzz.example", 22), ("10.0.0.1", 2222), ("[::1]", 22), ("Other.Example", 22))


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _authorized(entries: list[AuthorizedKey]) -> None:
    for entry in entries:
        o = entry.options
        (o.allows_pty, o.allows_port_forwarding, o.allows_agent_forwarding)  # noqa: B018
        (o.allows_x11_forwarding, o.allows_user_rc)  # noqa: B018
        o.expiry_timestamp()
        if o.from_patterns is not None:
            for address in ("127.0.0.1", "::ffff:10.0.0.1", "fe80::1%eth0"):
                match_from(o.from_patterns, address=address, hostname="host.fuzz.example")
        try:
            line = entry.to_line()
        except KeyFormatError:
            continue  # a value the writer cannot quote: refused, not corrupted
        again = parse_authorized_key(line)
        if again != entry:
            raise AssertionError(f"{line!r} parses to {again!r}, not {entry!r}")
    for key in (USER_ED25519.public, USER_CERT):
        find_authorized_keys(entries, key)


def _known(entries: list[KnownHost]) -> None:
    for entry in entries:
        again = parse_known_host(entry.to_line())
        if again != entry:
            raise AssertionError(f"{entry.to_line()!r} parses to {again!r}, not {entry!r}")
    for host, port in _HOSTS:
        found = known_hosts_lookup(entries, host, port)
        for key in (HOST_ED25519.public, HOST_CERT):
            found.status(key)


def check(data: bytes) -> None:
    if not data:
        return
    selector, text = data[0], _text(data[1:])
    known = bool(selector & 1)
    if selector & 2:
        entries = (parse_known_hosts if known else parse_authorized_keys)(text)
        try:
            (parse_known_hosts if known else parse_authorized_keys)(text, strict=True)
        except KeyFormatError:
            pass
    else:
        try:
            entries = [(parse_known_host if known else parse_authorized_key)(text)]
        except KeyFormatError:
            return
    if known:
        _known(entries)  # type: ignore[arg-type]
    else:
        _authorized(entries)  # type: ignore[arg-type]


TestOneInput = tolerate_known_bugs("authfiles", check)

if __name__ == "__main__":
    main(TestOneInput, "authfiles", instrument=("trioport", "ipaddress"))
