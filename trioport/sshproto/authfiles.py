"""``authorized_keys`` and ``known_hosts`` lines: parsed into typed objects and written back.

Theory of operation
-------------------
Both files are line-based (sshd(8) "AUTHORIZED_KEYS FILE FORMAT", "SSH_KNOWN_HOSTS
FILE FORMAT"). Blank lines and ``#`` comments are skipped. A line that does not
parse is refused with :class:`~trioport.errors.KeyFormatError`; the whole-file
helpers either skip such lines (what OpenSSH does: a broken line authorises
nothing) or, with ``strict=True``, raise naming the line number.

``authorized_keys``: ``[options] keytype base64 [comment]``. Options are
comma-separated ``name`` or ``name="value"`` items ending at the first unquoted
blank; option names are case-insensitive and inside a quoted value ``\\"`` stands
for ``"``. They are evaluated left to right as OpenSSH does, so ``restrict,pty``
allows a pty while ``pty,restrict`` does not; :class:`KeyOptions` keeps the
*outcome*, and writes it back in a canonical order that means the same thing. An
unknown option refuses the line.

``known_hosts``: ``[@cert-authority|@revoked] hosts keytype base64 [comment]``.
``hosts`` is either a comma-separated pattern list (``*``, ``?``, ``!`` negation,
``[host]:port`` for ports other than 22) or a single hashed name
``|1|base64(salt)|base64(HMAC-SHA1(salt, name))``. :func:`known_hosts_lookup`
gathers what the file says about one host and port.

Pattern matching is OpenSSH's ``match_pattern_list``: case-insensitive for host
names, and a matching negated pattern vetoes the whole list.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import DecodeError, KeyFormatError
from .certs import CERTIFICATE_KEY_TYPES, Certificate, match_pattern
from .keys import PublicKey, parse_public_key

__all__ = [
    "AuthorizedKey",
    "HostKeyStatus",
    "KeyOptions",
    "KnownHost",
    "KnownHostsMatch",
    "Marker",
    "find_authorized_keys",
    "hash_host",
    "host_lookup_name",
    "known_hosts_lookup",
    "match_from",
    "match_host_list",
    "parse_authorized_key",
    "parse_authorized_keys",
    "parse_known_host",
    "parse_known_hosts",
]

#: Longest line we parse (OpenSSH reads authorized_keys lines of up to 8 KiB with
#: its line reader, but RSA-16384 certificates with many principals can be longer).
MAX_LINE = 64 * 1024

_PLAIN_KEY_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "sk-ssh-ed25519@openssh.com",
}
#: Names that start a key (so a line starting with one has no options).
_KEY_TYPE_NAMES = (
    _PLAIN_KEY_TYPES
    | set(CERTIFICATE_KEY_TYPES)
    | {
        "ssh-dss-cert-v01@openssh.com",
        "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
        "sk-ssh-ed25519-cert-v01@openssh.com",
    }
)


def _key_from_fields(key_type: str, b64: str) -> PublicKey:
    try:
        blob = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyFormatError("public key is not valid base64") from None
    try:
        key = parse_public_key(blob)
    except DecodeError as exc:
        raise KeyFormatError(f"bad {key_type[:64]} key: {exc.description}") from None
    if key.key_type != key_type:
        raise KeyFormatError(f"line says {key_type[:64]!r} but the key is {key.key_type!r}")
    return key


def _split_key(rest: str) -> tuple[PublicKey, str]:
    fields = rest.split(None, 2)
    if len(fields) < 2:
        raise KeyFormatError("expected '<key type> <base64> [comment]'")
    key = _key_from_fields(fields[0], fields[1])
    return key, fields[2].strip() if len(fields) > 2 else ""


def _check_line(line: str) -> str:
    if len(line) > MAX_LINE:
        raise KeyFormatError(f"line longer than {MAX_LINE} characters")
    if "\n" in line.rstrip("\r\n") or "\x00" in line:
        raise KeyFormatError("line holds a newline or NUL")
    return line.strip()


# --- patterns -----------------------------------------------------------------------


def _match_list(name: str, patterns: Iterable[str]) -> int:
    """OpenSSH ``match_pattern_list`` (lowercased): 1 match, 0 none, -1 negated match."""
    result = 0
    for pattern in patterns:
        negated = pattern.startswith("!")
        if match_pattern(name, (pattern[1:] if negated else pattern).lower()):
            if negated:
                return -1
            result = 1
    return result


def match_host_list(name: str, patterns: Iterable[str]) -> bool:
    """OpenSSH ``match_hostname``: does ``name`` match the pattern list?

    Case-insensitive. A pattern starting with ``!`` that matches vetoes the list;
    otherwise any positive match wins.
    """
    return _match_list(name.lower(), patterns) == 1


def _match_address_list(address: str, patterns: Iterable[str]) -> int | None:
    """OpenSSH ``addr_match_list``: 1 match, 0 none, -1 negated match, None invalid."""
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return 0
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    result = 0
    for pattern in patterns:
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if "/" in pattern:
            try:
                net = ipaddress.ip_network(pattern, strict=True)
            except ValueError:
                return None  # a malformed CIDR spoils the whole list
            matched = net.version == addr.version and addr in net
        else:
            matched = match_pattern(str(addr), pattern)
        if matched:
            if negated:
                return -1
            result = 1
    return result


def match_from(patterns: Sequence[str], *, address: str, hostname: str | None = None) -> bool:
    """The ``from="..."`` check (OpenSSH ``match_host_and_ip``).

    Args:
        patterns: the option's comma-separated entries: host name globs, address
            globs or CIDR blocks, each optionally negated with ``!``.
        address: the client's IP address.
        hostname: the client's verified host name, if known (trioport never uses
            reverse DNS by default, so usually ``None``).

    Returns:
        ``True`` if the address or host name matches and nothing negated matches;
        ``False`` also for a list holding a malformed CIDR block.
    """
    ip_result = _match_address_list(address, patterns)
    if ip_result is None or ip_result == -1:
        return False
    host_result = _match_list(hostname.lower(), patterns) if hostname is not None else 0
    if host_result == -1:
        return False
    return ip_result == 1 or host_result == 1


# --- authorized_keys options --------------------------------------------------------

_OPTION_NAME = re.compile(r"[A-Za-z0-9_-]+")
_EXPIRY = re.compile(r"\d{8}(\d{4}(\d{2})?)?Z?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_FLAG_FIELDS = {
    # option name -> (field, value)
    "agent-forwarding": ("agent_forwarding", True),
    "no-agent-forwarding": ("agent_forwarding", False),
    "port-forwarding": ("port_forwarding", True),
    "no-port-forwarding": ("port_forwarding", False),
    "pty": ("pty", True),
    "no-pty": ("pty", False),
    "user-rc": ("user_rc", True),
    "no-user-rc": ("user_rc", False),
    "x11-forwarding": ("x11_forwarding", True),
    "no-x11-forwarding": ("x11_forwarding", False),
}
_TRISTATE_FIELDS = ("agent_forwarding", "port_forwarding", "pty", "user_rc", "x11_forwarding")
_WRITE_NAMES = {
    "agent_forwarding": ("agent-forwarding", "no-agent-forwarding"),
    "port_forwarding": ("port-forwarding", "no-port-forwarding"),
    "pty": ("pty", "no-pty"),
    "user_rc": ("user-rc", "no-user-rc"),
    "x11_forwarding": ("X11-forwarding", "no-X11-forwarding"),
}


def _expiry_moment(value: str) -> datetime.datetime:
    digits = value.rstrip("Z").ljust(14, "0")
    moment = datetime.datetime.strptime(digits, "%Y%m%d%H%M%S")
    return moment.replace(tzinfo=datetime.UTC)


def _tokenize_options(text: str) -> tuple[list[tuple[str, str | None]], str]:
    """Split leading options from ``text``; return them and the rest of the line."""
    items: list[tuple[str, str | None]] = []
    i = 0
    while True:
        match = _OPTION_NAME.match(text, i)
        if match is None:
            raise KeyFormatError(f"bad option syntax at column {i + 1}")
        name = match.group().lower()
        i = match.end()
        value: str | None = None
        if i < len(text) and text[i] == "=":
            if i + 1 >= len(text) or text[i + 1] != '"':
                raise KeyFormatError(f"option {name!r}: value must be in double quotes")
            i += 2
            chars = []
            while True:
                if i >= len(text):
                    raise KeyFormatError(f"option {name!r}: missing closing quote")
                c = text[i]
                if c == "\\" and i + 1 < len(text) and text[i + 1] == '"':
                    chars.append('"')
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            value = "".join(chars)
        items.append((name, value))
        if i >= len(text):
            raise KeyFormatError("options are not followed by a key")
        if text[i] == ",":
            i += 1
            continue
        if text[i] in " \t":
            return items, text[i:].strip()
        raise KeyFormatError(f"bad option syntax at column {i + 1}")


def _quote(value: str) -> str:
    if "\n" in value or "\r" in value or "\x00" in value:
        raise KeyFormatError("option values cannot hold newlines or NUL bytes")
    if value.endswith("\\"):
        # '\"' reads back as an escaped quote; OpenSSH's syntax cannot say this.
        raise KeyFormatError("option values cannot end with a backslash")
    return '"' + value.replace('"', '\\"') + '"'


def _list(value: str, name: str) -> tuple[str, ...]:
    entries = tuple(e.strip() for e in value.split(","))
    if not value or any(not e for e in entries):
        raise KeyFormatError(f"option {name!r}: empty list entry")
    return entries


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyOptions:
    """The options of an ``authorized_keys`` line, as their combined effect.

    The five forwarding/pty/rc fields are ``True`` (explicitly allowed), ``False``
    (explicitly refused) or ``None`` (not said: allowed unless :attr:`restrict`).
    Use the ``allows_*`` properties for the decision.
    """

    #: ``cert-authority``: the key is a CA trusted for user certificates.
    cert_authority: bool = False
    #: ``restrict``: everything below is off unless re-enabled after it.
    restrict: bool = False
    agent_forwarding: bool | None = None
    port_forwarding: bool | None = None
    pty: bool | None = None
    user_rc: bool | None = None
    x11_forwarding: bool | None = None
    #: ``command="..."``: run this instead of what the client asked.
    command: str | None = None
    #: ``environment="NAME=value"`` items, in order.
    environment: tuple[tuple[str, str], ...] = ()
    #: ``from="..."`` patterns, or ``None`` for any source.
    from_patterns: tuple[str, ...] | None = None
    #: ``principals="..."`` (with ``cert-authority``): names accepted in certificates.
    principals: tuple[str, ...] | None = None
    #: ``permitopen="host:port"`` items (local forwarding destinations).
    permit_open: tuple[str, ...] = ()
    #: ``permitlisten="[host:]port"`` items (remote forwarding listeners).
    permit_listen: tuple[str, ...] = ()
    #: ``expiry-time="YYYYMMDD[HHMM[SS]][Z]"``.
    expiry_time: str | None = None
    #: ``tunnel="n"``.
    tunnel: int | None = None
    #: FIDO options (kept so lines round-trip; trioport has no FIDO keys).
    no_touch_required: bool = False
    verify_required: bool = False

    def _allows(self, value: bool | None) -> bool:
        return value if value is not None else not self.restrict

    @property
    def allows_pty(self) -> bool:
        """Whether a pty may be allocated."""
        return self._allows(self.pty)

    @property
    def allows_port_forwarding(self) -> bool:
        """Whether port forwarding is allowed."""
        return self._allows(self.port_forwarding)

    @property
    def allows_agent_forwarding(self) -> bool:
        """Whether agent forwarding is allowed."""
        return self._allows(self.agent_forwarding)

    @property
    def allows_x11_forwarding(self) -> bool:
        """Whether X11 forwarding is allowed."""
        return self._allows(self.x11_forwarding)

    @property
    def allows_user_rc(self) -> bool:
        """Whether ``~/.ssh/rc`` may run."""
        return self._allows(self.user_rc)

    def expiry_timestamp(self) -> float | None:
        """``expiry-time`` as seconds since the epoch (UTC when no zone is given).

        OpenSSH reads a time without ``Z`` in the server's local zone; trioport
        servers run in UTC, so write ``Z`` to be explicit.
        """
        if self.expiry_time is None:
            return None
        return _expiry_moment(self.expiry_time).timestamp()

    @classmethod
    def parse(cls, items: Iterable[tuple[str, str | None]]) -> KeyOptions:
        """Evaluate tokenised ``(name, value)`` options left to right.

        Raises:
            KeyFormatError: an unknown option, a missing or unexpected value, a
                malformed value, or a repeated single-valued option.
        """
        state: dict[str, object] = {}
        env: list[tuple[str, str]] = []
        opens: list[str] = []
        listens: list[str] = []

        def once(key: str, value: object, name: str) -> None:
            if key in state:
                raise KeyFormatError(f"option {name!r} given twice")
            state[key] = value

        for name, value in items:
            if name in _FLAG_FIELDS or name in (
                "cert-authority",
                "restrict",
                "no-touch-required",
                "verify-required",
            ):
                if value is not None:
                    raise KeyFormatError(f"option {name!r} takes no value")
                if name in _FLAG_FIELDS:
                    fld, flag = _FLAG_FIELDS[name]
                    state[fld] = flag
                elif name == "restrict":
                    state["restrict"] = True
                    for fld in _TRISTATE_FIELDS:  # later options may re-enable
                        state.pop(fld, None)
                else:
                    state[name.replace("-", "_")] = True
                continue
            if value is None:
                known = {"command", "environment", "from", "principals", "permitopen"}
                known |= {"permitlisten", "expiry-time", "tunnel"}
                if name in known:
                    raise KeyFormatError(f"option {name!r} needs a value")
                raise KeyFormatError(f"unknown option {name!r}")
            if name == "command":
                once("command", value, name)
            elif name == "environment":
                env_name, sep, env_value = value.partition("=")
                if not sep or not _ENV_NAME.fullmatch(env_name):
                    raise KeyFormatError(f"environment={value!r} is not NAME=value")
                env.append((env_name, env_value))
            elif name == "from":
                once("from_patterns", _list(value, name), name)
            elif name == "principals":
                once("principals", _list(value, name), name)
            elif name == "permitopen":
                if ":" not in value:
                    raise KeyFormatError(f"permitopen={value!r} is not host:port")
                opens.append(value)
            elif name == "permitlisten":
                listens.append(value)
            elif name == "expiry-time":
                try:
                    if not _EXPIRY.fullmatch(value):
                        raise ValueError(value)
                    _expiry_moment(value)
                except ValueError:
                    raise KeyFormatError(
                        f"expiry-time={value!r} is not a YYYYMMDD[HHMM[SS]][Z] date"
                    ) from None
                once("expiry_time", value, name)
            elif name == "tunnel":
                if not (value.isascii() and value.isdigit()) or len(value) > 9:
                    raise KeyFormatError(f"tunnel={value!r} is not a number")
                once("tunnel", int(value), name)
            else:
                raise KeyFormatError(f"unknown option {name!r}")
        return cls(
            **state,  # type: ignore[arg-type]
            environment=tuple(env),
            permit_open=tuple(opens),
            permit_listen=tuple(listens),
        )

    def to_text(self) -> str:
        """The options as written in ``authorized_keys`` (empty if there are none)."""
        parts: list[str] = []
        if self.cert_authority:
            parts.append("cert-authority")
        if self.restrict:
            parts.append("restrict")
        for fld in _TRISTATE_FIELDS:
            value = getattr(self, fld)
            if value is not None:
                yes, no = _WRITE_NAMES[fld]
                parts.append(yes if value else no)
        if self.command is not None:
            parts.append("command=" + _quote(self.command))
        for env_name, env_value in self.environment:
            parts.append("environment=" + _quote(f"{env_name}={env_value}"))
        if self.from_patterns is not None:
            parts.append("from=" + _quote(",".join(self.from_patterns)))
        if self.principals is not None:
            parts.append("principals=" + _quote(",".join(self.principals)))
        parts.extend("permitopen=" + _quote(v) for v in self.permit_open)
        parts.extend("permitlisten=" + _quote(v) for v in self.permit_listen)
        if self.expiry_time is not None:
            parts.append("expiry-time=" + _quote(self.expiry_time))
        if self.tunnel is not None:
            parts.append(f'tunnel="{self.tunnel}"')
        if self.no_touch_required:
            parts.append("no-touch-required")
        if self.verify_required:
            parts.append("verify-required")
        return ",".join(parts)


@dataclass(frozen=True, slots=True)
class AuthorizedKey:
    """One ``authorized_keys`` line."""

    key: PublicKey
    options: KeyOptions = field(default_factory=KeyOptions)
    comment: str = ""

    def to_line(self) -> str:
        """The line, without a newline."""
        text = self.options.to_text()
        key_part = self.key.openssh_line(self.comment)
        return f"{text} {key_part}" if text else key_part


def parse_authorized_key(line: str) -> AuthorizedKey:
    """Parse one ``authorized_keys`` line (not blank, not a comment).

    Raises:
        KeyFormatError: bad options, an unknown option, a bad or unsupported key.
    """
    text = _check_line(line)
    if not text or text.startswith("#"):
        raise KeyFormatError("blank or comment line")
    first = text.split(None, 1)[0]
    if first in _KEY_TYPE_NAMES:
        options = KeyOptions()
        rest = text
    else:
        items, rest = _tokenize_options(text)
        options = KeyOptions.parse(items)
    key, comment = _split_key(rest)
    if options.cert_authority and isinstance(key, Certificate):
        raise KeyFormatError("a cert-authority key cannot itself be a certificate")
    if options.principals is not None and not options.cert_authority:
        raise KeyFormatError("principals= is only meaningful with cert-authority")
    return AuthorizedKey(key, options, comment)


def parse_authorized_keys(text: str, *, strict: bool = False) -> list[AuthorizedKey]:
    """Parse a whole ``authorized_keys`` file.

    Args:
        text: the file's contents.
        strict: raise on the first bad line instead of skipping it.

    Raises:
        KeyFormatError: only with ``strict``; the message names the line number.
    """
    return _parse_file(text, parse_authorized_key, strict)


def find_authorized_keys(entries: Iterable[AuthorizedKey], key: PublicKey) -> list[AuthorizedKey]:
    """The lines that could authorise ``key``.

    A plain key matches lines holding that key without ``cert-authority``; a
    certificate matches ``cert-authority`` lines holding its CA key (the caller then
    runs :func:`~trioport.sshproto.certs.check_certificate` with that CA and the
    line's ``principals``).
    """
    if isinstance(key, Certificate):
        return [e for e in entries if e.options.cert_authority and e.key == key.signature_key]
    return [e for e in entries if not e.options.cert_authority and e.key == key]


# --- known_hosts ---------------------------------------------------------------------


class Marker(enum.Enum):
    """The optional marker that starts a ``known_hosts`` line."""

    #: The key is a CA trusted to sign host certificates for the listed hosts.
    CERT_AUTHORITY = "@cert-authority"
    #: The key must never be accepted.
    REVOKED = "@revoked"


_HASH_MAGIC = "|1|"


def host_lookup_name(host: str, port: int = 22) -> str:
    """The name ``known_hosts`` stores for a host: ``host`` or ``[host]:port``."""
    host = host.lower()
    return host if port == 22 else f"[{host}]:{port}"


def hash_host(name: str, salt: bytes) -> str:
    """A hashed ``known_hosts`` name, ``|1|salt|HMAC-SHA1(salt, name)`` (base64).

    Args:
        name: from :func:`host_lookup_name`.
        salt: 20 random bytes from the caller's RNG.
    """
    if len(salt) != 20:
        raise KeyFormatError("a known_hosts salt is 20 bytes")
    digest = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
    return f"{_HASH_MAGIC}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownHost:
    """One ``known_hosts`` line.

    Exactly one of :attr:`patterns` (a non-empty pattern list) and :attr:`hashed`
    (``(salt, digest)``) is set.
    """

    key: PublicKey
    patterns: tuple[str, ...] = ()
    hashed: tuple[bytes, bytes] | None = None
    marker: Marker | None = None
    comment: str = ""

    def __post_init__(self) -> None:
        if (self.hashed is None) == (not self.patterns):
            raise KeyFormatError("a known_hosts line has either patterns or one hashed name")
        for pattern in self.patterns:
            if not pattern or pattern == "!" or any(c in pattern for c in " \t,\n\x00"):
                raise KeyFormatError(f"bad host pattern {pattern!r}")

    def matches(self, host: str, port: int = 22) -> bool:
        """Whether this line is about ``host`` on ``port``."""
        name = host_lookup_name(host, port)
        if self.hashed is not None:
            salt, digest = self.hashed
            mine = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
            return hmac.compare_digest(mine, digest)
        return match_host_list(name, self.patterns)

    def to_line(self) -> str:
        """The line, without a newline."""
        if self.hashed is not None:
            salt, digest = self.hashed
            hosts = f"{_HASH_MAGIC}{base64.b64encode(salt).decode()}|"
            hosts += base64.b64encode(digest).decode()
        else:
            hosts = ",".join(self.patterns)
        line = f"{hosts} {self.key.openssh_line(self.comment)}"
        return f"{self.marker.value} {line}" if self.marker else line


def _parse_hashed(field_text: str) -> tuple[bytes, bytes]:
    parts = field_text[len(_HASH_MAGIC) :].split("|")
    if len(parts) != 2:
        raise KeyFormatError("hashed host name is not |1|salt|hash")
    try:
        salt = base64.b64decode(parts[0], validate=True)
        digest = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("hashed host name is not valid base64") from None
    if len(salt) != 20 or len(digest) != 20:
        raise KeyFormatError("hashed host name salt and hash must be 20 bytes each")
    return salt, digest


def _split_word(text: str) -> tuple[str, str, str]:
    parts = text.split(None, 1)
    if not parts:
        return "", " ", ""
    return parts[0], " ", parts[1].strip() if len(parts) > 1 else ""


def parse_known_host(line: str) -> KnownHost:
    """Parse one ``known_hosts`` line (not blank, not a comment).

    Raises:
        KeyFormatError: an unknown marker, a bad host field, a bad or unsupported key.
    """
    text = _check_line(line)
    if not text or text.startswith("#"):
        raise KeyFormatError("blank or comment line")
    marker = None
    if text.startswith("@"):
        word, _, text = _split_word(text)
        try:
            marker = Marker(word)
        except ValueError:
            raise KeyFormatError(f"unknown marker {word[:32]!r}") from None
    hosts, _, rest = _split_word(text)
    if not rest:
        raise KeyFormatError("expected '<hosts> <key type> <base64> [comment]'")
    key, comment = _split_key(rest)
    if marker is Marker.CERT_AUTHORITY and isinstance(key, Certificate):
        raise KeyFormatError("a @cert-authority key cannot itself be a certificate")
    if hosts.startswith(_HASH_MAGIC):
        return KnownHost(key=key, hashed=_parse_hashed(hosts), marker=marker, comment=comment)
    return KnownHost(key=key, patterns=tuple(hosts.split(",")), marker=marker, comment=comment)


def parse_known_hosts(text: str, *, strict: bool = False) -> list[KnownHost]:
    """Parse a whole ``known_hosts`` file.

    Args:
        text: the file's contents.
        strict: raise on the first bad line instead of skipping it.

    Raises:
        KeyFormatError: only with ``strict``; the message names the line number.
    """
    return _parse_file(text, parse_known_host, strict)


class HostKeyStatus(enum.Enum):
    """What ``known_hosts`` says about a plain host key."""

    #: Listed for this host.
    TRUSTED = "trusted"
    #: Marked ``@revoked`` (itself, or for a certificate its key or CA).
    REVOKED = "revoked"
    #: Not listed, but other keys are: possibly a man in the middle.
    CHANGED = "changed"
    #: Nothing is known about this host.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class KnownHostsMatch:
    """Everything ``known_hosts`` says about one host and port."""

    #: Plain keys trusted for the host.
    keys: tuple[PublicKey, ...] = ()
    #: CA keys trusted to sign the host's certificates (``@cert-authority``).
    cert_authorities: tuple[PublicKey, ...] = ()
    #: Keys that must never be accepted (``@revoked``).
    revoked: tuple[PublicKey, ...] = ()

    def is_revoked(self, key: PublicKey) -> bool:
        """Whether ``key`` is revoked; for a certificate, also its key and its CA."""
        if key in self.revoked:
            return True
        if isinstance(key, Certificate):
            return key.key in self.revoked or key.signature_key in self.revoked
        return False

    def status(self, key: PublicKey) -> HostKeyStatus:
        """Classify a host key. A certificate is judged by its plain key here.

        To accept a host *certificate*, call
        :func:`~trioport.sshproto.certs.check_certificate` with
        ``trusted_cas=self.cert_authorities`` and the host name as principal.
        """
        if self.is_revoked(key):
            return HostKeyStatus.REVOKED
        plain = key.key if isinstance(key, Certificate) else key
        if plain in self.keys:
            return HostKeyStatus.TRUSTED
        if self.keys:
            return HostKeyStatus.CHANGED
        return HostKeyStatus.UNKNOWN


def known_hosts_lookup(entries: Iterable[KnownHost], host: str, port: int = 22) -> KnownHostsMatch:
    """Gather the lines about ``host`` on ``port`` (``[host]:port`` when not 22).

    Args:
        entries: parsed lines (:func:`parse_known_hosts`).
        host: the host name or address as the user gave it (matched lowercased).
        port: the SSH port.
    """
    keys: list[PublicKey] = []
    cas: list[PublicKey] = []
    revoked: list[PublicKey] = []
    for entry in entries:
        if not entry.matches(host, port):
            continue
        if entry.marker is Marker.REVOKED:
            revoked.append(entry.key)
        elif entry.marker is Marker.CERT_AUTHORITY:
            cas.append(entry.key)
        else:
            keys.append(entry.key)
    return KnownHostsMatch(tuple(keys), tuple(cas), tuple(revoked))


# --- files ---------------------------------------------------------------------------


def _parse_file(text: str, parse_line, strict: bool) -> list:  # type: ignore[no-untyped-def]
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            out.append(parse_line(line))
        except KeyFormatError as exc:
            if strict:
                raise KeyFormatError(f"line {number}: {exc}") from None
    return out
