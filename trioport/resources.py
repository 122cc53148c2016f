"""The cluster's resources and the one converter that reads and writes them.

Every piece of cluster state (users, roles, join tokens, nodes, certificate
authorities, sessions, audit events) has Teleport's shape::

    kind: role
    version: v1
    metadata: {name, description, labels, expires, revision}
    spec: {...}

The classes are attrs classes. One cattrs :data:`converter` turns them into plain
dicts and back, and from there into JSON or YAML (PyYAML's safe loader and dumper
only). The converter is strict on purpose, because resources are written by hand
and a typo must not silently widen someone's access: unknown keys, a string where a
list belongs, ``yes`` where a number belongs, all raise
:class:`trioport.errors.ConfigError` whose message names the path of the field
(``spec.allow.logins[2]: expected a string, got a number``), and for YAML the file
and line.

Secrets live in clearly marked places and never leave through the default view:
a user's password hash, TOTP secret and invite token hash (``spec.local_auth``), a
CA's private keys (``spec.private_keys``) and a join token's name (the token *is*
its name). ``to_dict``, ``to_json`` and ``to_yaml`` strip them unless asked for
``secrets=True`` (which only the storage layer should do), and every ``repr``
masks them.

:mod:`trioport.config` uses the same converter for the configuration file.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NewType

import attrs
import cattrs
import cattrs.cols
import cattrs.gen
import yaml

from trioport.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_SESSION_TTL",
    "KINDS",
    "LOGIN_NAME",
    "MAX_YAML_NODES",
    "PRESET_ROLES",
    "RULE_RESOURCES",
    "RULE_VERBS",
    "AuditEvent",
    "AuditEventSpec",
    "CertAuthority",
    "CertAuthoritySpec",
    "CommandLabel",
    "FieldError",
    "LocalAuth",
    "Metadata",
    "Node",
    "NodeSpec",
    "Party",
    "RecordSession",
    "Resource",
    "Role",
    "RoleConditions",
    "RoleOptions",
    "RoleSpec",
    "Rule",
    "Session",
    "SessionSpec",
    "Token",
    "TokenSpec",
    "User",
    "UserSpec",
    "UserStatus",
    "attrs_structure_fn",
    "check_label_key",
    "check_label_value_pattern",
    "check_login_template",
    "check_name",
    "converter",
    "format_duration",
    "format_path",
    "from_dict",
    "from_json",
    "from_yaml",
    "from_yaml_all",
    "mask_secret",
    "parse_duration",
    "preset_roles",
    "raise_problems",
    "structure",
    "to_dict",
    "to_json",
    "to_yaml",
    "yaml_documents",
]

VERSION = "v1"
DEFAULT_MAX_SESSION_TTL = dt.timedelta(hours=23)

#: What a role rule may name, and what it may do to it ("*" means all).
RULE_RESOURCES = ("user", "role", "token", "node", "cert_authority", "session", "event", "*")
RULE_VERBS = ("list", "read", "create", "update", "delete", "*")

# --- validated scalar types (each has a structure hook below) ---------------------

#: A resource name: non-empty, at most 255 characters, no "/" and no control characters.
Name = NewType("Name", str)
#: A label key, Teleport's alphabet: letters, digits and ``/ . _ : * -``.
LabelKey = NewType("LabelKey", str)
#: A login in a role: an OS login name or a ``{{internal.TRAIT}}`` template.
LoginTemplate = NewType("LoginTemplate", str)
#: ``node_labels``: label key -> accepted values (YAML may give one value as a string).
LabelSelector = NewType("LabelSelector", dict[str, list[str]])
#: A JSON value (the free-form fields of an audit event).
JsonValue = NewType("JsonValue", object)
#: An OpenSSH public key line: ``TYPE BASE64 [COMMENT]``.
PublicKeyLine = NewType("PublicKeyLine", str)

_NAME_FORBIDDEN = re.compile(r"[/\x00-\x1f\x7f]")
_LABEL_KEY = re.compile(r"[A-Za-z0-9/._:*-]+")
#: OS login names as useradd(8) and Samba accept them.
LOGIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@$-]{0,254}")
_TEMPLATE = re.compile(r"\{\{\s*internal\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_PUBLIC_KEY = re.compile(r"[A-Za-z0-9@._-]+ [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?")


class FieldError(ValueError):
    """A bad value below the field being structured; ``path`` leads to it."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


def _what(value: object) -> str:
    """A user-facing name for the type of a parsed YAML/JSON value (never the value)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dt.date):
        return "a date"
    return type(value).__name__


def check_name(value: object, what: str = "name") -> str:
    """Return ``value`` if it is a valid resource name, else raise :class:`FieldError`."""
    if not isinstance(value, str):
        raise FieldError(f"expected a string, got {_what(value)}")
    if not value:
        raise FieldError(f"{what} must not be empty")
    if len(value) > 255:
        raise FieldError(f"{what} is longer than 255 characters")
    if value in (".", "..") or _NAME_FORBIDDEN.search(value):
        raise FieldError(f"{what} must not contain '/' or control characters")
    return value


def check_label_key(value: object) -> str:
    """Return ``value`` if it is a valid label key, else raise :class:`FieldError`."""
    if not isinstance(value, str):
        raise FieldError(f"expected a string, got {_what(value)}")
    if not _LABEL_KEY.fullmatch(value):
        raise FieldError("a label key may only contain letters, digits and / . _ : * -")
    return value


def check_login_template(value: object) -> str:
    """Return ``value`` if it is an OS login name or an ``{{internal.X}}`` template."""
    if not isinstance(value, str):
        raise FieldError(f"expected a string, got {_what(value)}")
    if "{{" in value or "}}" in value:
        if not _TEMPLATE.fullmatch(value):
            raise FieldError("a template must look like {{internal.logins}}")
        return value
    if not LOGIN_NAME.fullmatch(value):
        raise FieldError("not a valid login name")
    return value


def check_label_value_pattern(value: str) -> str:
    """Return ``value`` if it is a valid ``node_labels`` value: ``*``, exact, or ``^regex$``."""
    if value.startswith("^") and value.endswith("$") and len(value) >= 2:
        try:
            re.compile(value)
        except re.error as exc:
            raise FieldError(f"bad regular expression: {exc}") from None
        return value
    if "*" in value and value != "*":
        # A glob would silently match nothing here: refuse instead of guessing.
        raise FieldError("use '*' alone, an exact value, or a regular expression like '^prod-.*$'")
    return value


# --- durations, Go style (time.ParseDuration) -------------------------------------

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> dt.timedelta:
    """Parse a Go-style duration such as ``"23h"``, ``"1h30m"``, ``"1.5s"`` or ``"0"``.

    Raises:
        ValueError: not a duration, or a negative one.
    """
    s = text.strip()
    if s.startswith("-"):
        raise ValueError("a duration must not be negative")
    s = s.removeprefix("+")
    if s == "0":
        return dt.timedelta(0)
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"expected a duration like '23h', '30m' or '1h30m', got {text[:32]!r}")
    if total > 10 * 365 * 86400:
        raise ValueError("a duration longer than ten years is surely a mistake")
    return dt.timedelta(seconds=total)


def format_duration(value: dt.timedelta) -> str:
    """Print a duration the way :func:`parse_duration` reads it (``"1h30m"``, ``"0s"``)."""
    total = value.total_seconds()
    sign, total = ("-", -total) if total < 0 else ("", total)
    if total == 0:
        return "0s"
    if total < 1:
        for unit, scale in (("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
            if total >= scale:
                return f"{sign}{round(total / scale, 6):g}{unit}"
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    out = sign
    if hours:
        out += f"{int(hours)}h"
    if minutes:
        out += f"{int(minutes)}m"
    if seconds:
        out += f"{round(seconds, 6):g}s"
    return out


def mask_secret(secret: str) -> str:
    """Show only the last quarter of a secret, so logs can tell tokens apart."""
    keep = len(secret) // 4
    return "*" * (len(secret) - keep) + (secret[-keep:] if keep else "")


def _redact(value: object) -> str:
    return "'<redacted>'" if value else repr(value)


def _non_empty(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a list that must hold at least one item."""
    if not value:
        raise FieldError("must not be empty", (attr.name,))


# --- the resources ----------------------------------------------------------------


@attrs.define(kw_only=True)
class Metadata:
    """What every resource has: its name and a few housekeeping fields."""

    name: Name = attrs.field(validator=lambda _i, _a, v: check_name(v))
    description: str = ""
    labels: dict[LabelKey, str] = attrs.Factory(dict)
    #: When the resource disappears from the backend (UTC); None = never.
    expires: dt.datetime | None = None
    #: The backend's revision when it was read, for compare-and-swap; not user-set.
    revision: str | None = None


@attrs.define(kw_only=True)
class Rule:
    """Which verbs a role grants (or denies) on which resource kinds."""

    resources: list[Literal[RULE_RESOURCES]]  # type: ignore[valid-type]
    verbs: list[Literal[RULE_VERBS]]  # type: ignore[valid-type]


@attrs.define(kw_only=True)
class RoleConditions:
    """One side (allow or deny) of a role."""

    logins: list[LoginTemplate] = attrs.Factory(list)
    node_labels: LabelSelector = attrs.Factory(dict)  # type: ignore[assignment]
    rules: list[Rule] = attrs.Factory(list)


def _at_least_a_minute(_inst: object, attr: attrs.Attribute[Any], value: dt.timedelta) -> None:
    if value < dt.timedelta(minutes=1):
        raise FieldError("must be at least 1m", (attr.name,))


@attrs.define(kw_only=True)
class RecordSession:
    """How a role's SSH sessions react when their recording cannot be stored.

    ``best_effort`` (the default): the session goes on, unrecorded from then on,
    and a ``session.upload`` audit event with ``success: false`` says so.
    ``strict``: the session ends with a message to the user. A user with one
    strict role is strict.
    """

    ssh: Literal["best_effort", "strict"] = "best_effort"


@attrs.define(kw_only=True)
class RoleOptions:
    """Options a role puts on the certificates and sessions of its users.

    Forwarding is off unless a role turns it on; when a user has several roles, any
    one allowing forwarding is enough (as in Teleport). ``client_idle_timeout`` of
    zero means no idle timeout from this role.
    """

    max_session_ttl: dt.timedelta = attrs.field(
        default=DEFAULT_MAX_SESSION_TTL, validator=_at_least_a_minute
    )
    forward_agent: bool = False
    port_forwarding: bool = False
    client_idle_timeout: dt.timedelta = dt.timedelta(0)
    disconnect_expired_cert: bool = False
    record_session: RecordSession = attrs.Factory(RecordSession)


@attrs.define(kw_only=True)
class RoleSpec:
    options: RoleOptions = attrs.Factory(RoleOptions)
    allow: RoleConditions = attrs.Factory(RoleConditions)
    deny: RoleConditions = attrs.Factory(RoleConditions)


@attrs.define(kw_only=True)
class Role:
    """A named set of permissions; see :mod:`trioport.rbac` for what they mean."""

    kind: Literal["role"] = "role"
    version: Literal["v1"] = VERSION
    metadata: Metadata
    spec: RoleSpec = attrs.Factory(RoleSpec)

    @property
    def name(self) -> str:
        return self.metadata.name

    def public(self) -> Role:
        """A role holds no secrets: itself."""
        return self


@attrs.define(kw_only=True)
class LocalAuth:
    """A user's credentials. Private: stripped by :meth:`User.public`."""

    password_hash: bytes | None = attrs.field(default=None, repr=_redact)
    totp_secret: str | None = attrs.field(default=None, repr=_redact)
    #: The TOTP time step of the last accepted code; a code is never accepted twice.
    totp_last_step: int | None = None
    #: sha256 (hex) of the pending invite or reset token; the token itself is never stored.
    invite_token_hash: str | None = attrs.field(default=None, repr=_redact)


@attrs.define(kw_only=True)
class UserStatus:
    """Lockout and invite state."""

    locked_until: dt.datetime | None = None
    lock_reason: str = ""
    #: Times of recent failed logins (the auth service keeps the last window's worth).
    failed_logins: list[dt.datetime] = attrs.Factory(list)
    #: ``invited`` until the invite is completed, ``reset`` while a reset link is out.
    state: Literal["invited", "active", "reset"] = "active"
    #: When the pending invite or reset link stops working.
    invite_expires: dt.datetime | None = None


@attrs.define(kw_only=True)
class UserSpec:
    roles: list[Name] = attrs.Factory(list)
    #: Named lists of values the roles' templates expand; ``logins`` is the usual one.
    traits: dict[str, list[str]] = attrs.Factory(dict)
    created: dt.datetime | None = None
    status: UserStatus = attrs.Factory(UserStatus)
    local_auth: LocalAuth | None = None


@attrs.define(kw_only=True)
class User:
    """A person who logs in. ``metadata.name`` is the user name."""

    kind: Literal["user"] = "user"
    version: Literal["v1"] = VERSION
    metadata: Metadata
    spec: UserSpec = attrs.Factory(UserSpec)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def logins(self) -> list[str]:
        """The user's own OS logins (the ``logins`` trait)."""
        return list(self.spec.traits.get("logins", []))

    def public(self) -> User:
        """The user without credentials: what any API may show."""
        return attrs.evolve(self, spec=attrs.evolve(self.spec, local_auth=None))


@attrs.define(kw_only=True)
class TokenSpec:
    roles: list[Literal["node", "proxy", "auth"]] = attrs.field(validator=_non_empty)


@attrs.define(kw_only=True, repr=False)
class Token:
    """A join token. Its name is the secret: masked in ``repr`` and in :meth:`public`."""

    kind: Literal["token"] = "token"
    version: Literal["v1"] = VERSION
    metadata: Metadata
    spec: TokenSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def public(self) -> Token:
        """The token with its name masked: safe for logs and listings."""
        masked = attrs.evolve(self.metadata, name=mask_secret(self.metadata.name) or "*")
        return attrs.evolve(self, metadata=masked)

    def __repr__(self) -> str:
        return (
            f"Token(name={mask_secret(self.metadata.name)!r}, roles={self.spec.roles!r}, "
            f"expires={self.metadata.expires!r})"
        )


@attrs.define(kw_only=True)
class CommandLabel:
    """A label whose value is the trimmed output of a command run every ``period``."""

    command: list[str] = attrs.field(validator=_non_empty)
    period: dt.timedelta = dt.timedelta(minutes=1)
    result: str = ""


@attrs.define(kw_only=True)
class NodeSpec:
    hostname: str
    #: Where the node's SSH service listens, "host:port".
    addr: str
    cmd_labels: dict[LabelKey, CommandLabel] = attrs.Factory(dict)


@attrs.define(kw_only=True)
class Node:
    """A registered node. ``metadata.name`` is its UUID; ``metadata.labels`` its static labels."""

    kind: Literal["node"] = "node"
    version: Literal["v1"] = VERSION
    metadata: Metadata
    spec: NodeSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def all_labels(self) -> dict[str, str]:
        """Static labels overlaid with the latest command-label results: what RBAC matches."""
        labels = dict(self.metadata.labels)
        labels.update({k: v.result for k, v in self.spec.cmd_labels.items()})
        return labels

    def public(self) -> Node:
        return self


@attrs.define(kw_only=True)
class CertAuthoritySpec:
    type: Literal["user", "host"]
    cluster_name: Name
    #: OpenSSH public key lines (``ssh-ed25519 AAAA...``), the first one signs.
    public_keys: list[PublicKeyLine] = attrs.field(validator=_non_empty)
    #: OpenSSH private keys matching ``public_keys``. Private: stripped by ``public()``.
    private_keys: list[str] = attrs.field(factory=list, repr=lambda v: f"<{len(v)} redacted>")


@attrs.define(kw_only=True)
class CertAuthority:
    """The user or host CA of a cluster. ``metadata.name`` is conventionally the cluster name."""

    kind: Literal["cert_authority"] = "cert_authority"
    version: Literal["v1"] = VERSION
    metadata: Metadata
    spec: CertAuthoritySpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def public(self) -> CertAuthority:
        """The CA without its private keys: what nodes, proxies and users may see."""
        return attrs.evolve(self, spec=attrs.evolve(self.spec, private_keys=[]))


@attrs.define(kw_only=True)
class Party:
    """Someone attached to a session."""

    id: str
    user: str
    remote_addr: str = ""
    joined: dt.datetime | None = None


@attrs.define(kw_only=True)
class SessionSpec:
    kind: Literal["interactive", "exec", "sftp"] = "interactive"
    #: The user who started it.
    user: str
    login: str
    #: The node's UUID, and its host name for display.
    node: str
    node_hostname: str = ""
    parties: list[Party] = attrs.Factory(list)
    created: dt.datetime
    ended: dt.datetime | None = None
    state: Literal["active", "ended"] = "active"


@attrs.define(kw_only=True)
class Session:
    """A tracked SSH session. ``metadata.name`` is the session id."""

    kind: Literal["session"] = "session"
    version: Literal["v1"] = VERSION
    metadata: Metadata
    spec: SessionSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def public(self) -> Session:
        return self


_EVENT_CORE = ("event", "code", "time", "uid")


def _check_fields(_inst: object, _attr: object, fields: dict[str, object]) -> None:
    clash = sorted(set(fields) & set(_EVENT_CORE))
    if clash:
        raise FieldError(f"{clash[0]!r} is reserved", ("fields", clash[0]))


@attrs.define(kw_only=True)
class AuditEventSpec:
    #: Teleport's stable event name, e.g. "user.login", "session.start".
    event: str
    #: Teleport's stable event code, e.g. "T1000I".
    code: str
    time: dt.datetime
    #: Everything else (user, login, sid, server_id, addr.remote, success, error, ...).
    fields: dict[str, JsonValue] = attrs.field(factory=dict, validator=_check_fields)


@attrs.define(kw_only=True)
class AuditEvent:
    """One audit log entry. ``metadata.name`` is its unique id."""

    kind: Literal["event"] = "event"
    version: Literal["v1"] = VERSION
    metadata: Metadata
    spec: AuditEventSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def public(self) -> AuditEvent:
        return self

    def to_record(self) -> dict[str, Any]:
        """The flat JSON object Teleport writes to its audit log (``event``, ``code``, ...)."""
        s = self.spec
        return {
            "event": s.event,
            "code": s.code,
            "time": _unstructure_datetime(s.time),
            "uid": self.metadata.name,
            **s.fields,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, source: str | None = None) -> AuditEvent:
        """Read back what :meth:`to_record` wrote."""
        if not isinstance(record, Mapping):
            raise ConfigError(f"expected a mapping, got {_what(record)}", path=source)
        missing = [k for k in _EVENT_CORE if k not in record]
        if missing:
            raise ConfigError("required key missing", path=source, key=missing[0])
        data = {
            "metadata": {"name": record["uid"]},
            "spec": {
                "event": record["event"],
                "code": record["code"],
                "time": record["time"],
                "fields": {k: v for k, v in record.items() if k not in _EVENT_CORE},
            },
        }
        return structure(data, cls, source=source)


#: Any resource; a mapping's ``kind`` says which.
Resource = User | Role | Token | Node | CertAuthority | Session | AuditEvent
_BY_KIND: dict[str, type[Any]] = {
    "user": User,
    "role": Role,
    "token": Token,
    "node": Node,
    "cert_authority": CertAuthority,
    "session": Session,
    "event": AuditEvent,
}
KINDS = tuple(_BY_KIND)


# --- preset roles -----------------------------------------------------------------


def preset_roles() -> dict[str, Role]:
    """Fresh copies of the preset roles ``access``, ``editor`` and ``auditor``.

    - ``access``: the user's own logins (``{{internal.logins}}``) on every node, with
      agent and port forwarding; may list nodes and sessions (to join them).
    - ``editor``: manages users, roles, tokens and nodes; reads the CAs. No logins.
    - ``auditor``: reads sessions (and their recordings) and the audit log. No logins.
    """

    def rule(resources: list[str], verbs: list[str]) -> Rule:
        return Rule(resources=resources, verbs=verbs)  # type: ignore[arg-type]

    read = ["list", "read"]
    return {
        "access": Role(
            metadata=Metadata(name=Name("access"), description="Log in to every node"),
            spec=RoleSpec(
                options=RoleOptions(forward_agent=True, port_forwarding=True),
                allow=RoleConditions(
                    logins=[LoginTemplate("{{internal.logins}}")],
                    node_labels=LabelSelector({"*": ["*"]}),
                    rules=[rule(["node", "session"], read)],
                ),
            ),
        ),
        "editor": Role(
            metadata=Metadata(name=Name("editor"), description="Manage cluster resources"),
            spec=RoleSpec(
                allow=RoleConditions(
                    rules=[
                        rule(["user", "role", "token", "node"], ["*"]),
                        rule(["cert_authority"], read),
                    ]
                )
            ),
        ),
        "auditor": Role(
            metadata=Metadata(name=Name("auditor"), description="Read sessions and the audit log"),
            spec=RoleSpec(allow=RoleConditions(rules=[rule(["session", "event"], read)])),
        ),
    }


PRESET_ROLES = tuple(preset_roles())


# --- the converter ----------------------------------------------------------------

#: The one converter for resources and the configuration file.
converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)


def _strict(kind: type | tuple[type, ...], what: str) -> Callable[[object, object], Any]:
    def hook(value: object, _type: object) -> Any:
        if isinstance(value, kind) and not (isinstance(value, bool) and bool not in _tuple(kind)):
            return value
        raise FieldError(f"expected {what}, got {_what(value)}")

    return hook


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


converter.register_structure_hook(str, _strict(str, "a string"))
converter.register_structure_hook(int, _strict(int, "an integer"))
converter.register_structure_hook(
    float, lambda v, t: float(_strict((int, float), "a number")(v, t))
)
converter.register_structure_hook(bool, _strict(bool, "true or false"))


def _literal_factory(type_: Any) -> Callable[[object, object], Any]:
    allowed = typing.get_args(type_)

    def hook(value: object, _type: object) -> Any:
        if isinstance(value, str | int) and not isinstance(value, bool) and value in allowed:
            return value
        shown = repr(value)[:32] if isinstance(value, str | int) else _what(value)
        choices = ", ".join(str(a) for a in allowed)
        raise FieldError(f"expected one of: {choices} (got {shown})")

    return hook


def _list_factory(type_: Any, conv: cattrs.Converter) -> Callable[[object, object], Any]:
    inner = cattrs.cols.list_structure_factory(type_, conv)

    def hook(value: object, t: object) -> Any:
        if not isinstance(value, list):
            raise FieldError(f"expected a list, got {_what(value)}")
        return inner(value, t)

    return hook


def _dict_factory(type_: Any, conv: cattrs.Converter) -> Callable[[object, object], Any]:
    inner = cattrs.cols.mapping_structure_factory(type_, conv)

    def hook(value: object, t: object) -> Any:
        if not isinstance(value, Mapping):
            raise FieldError(f"expected a mapping, got {_what(value)}")
        return inner(value, t)

    return hook


converter.register_structure_hook_factory(
    lambda t: typing.get_origin(t) is Literal, _literal_factory
)
converter.register_structure_hook_factory(lambda t: typing.get_origin(t) is list, _list_factory)
converter.register_structure_hook_factory(lambda t: typing.get_origin(t) is dict, _dict_factory)


def _structure_datetime(value: object, _type: object) -> dt.datetime:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise FieldError("expected a time like 2024-05-01T12:00:00Z") from None
    if isinstance(value, dt.datetime):
        # YAML and RFC 3339 both read a time without an offset as UTC.
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)
    raise FieldError(f"expected a time like 2024-05-01T12:00:00Z, got {_what(value)}")


def _unstructure_datetime(value: dt.datetime) -> str:
    value = value.astimezone(dt.UTC) if value.tzinfo else value
    return value.replace(tzinfo=None).isoformat() + "Z"


def _structure_duration(value: object, _type: object) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
    if not isinstance(value, str):
        raise FieldError(f"expected a duration like '23h' or '1h30m', got {_what(value)}")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise FieldError(str(exc)) from None


def _structure_bytes(value: object, _type: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.isascii():
        return value.encode("ascii")
    raise FieldError(f"expected an ASCII string, got {_what(value)}")


def _unstructure_bytes(value: bytes) -> str:
    # Only bcrypt hashes are bytes, and they are ASCII; anything else is a bug, not data.
    return value.decode("ascii")


def _structure_selector(value: object, _type: object) -> dict[str, list[str]]:
    if not isinstance(value, Mapping):
        raise FieldError(f"expected a mapping, got {_what(value)}")
    out: dict[str, list[str]] = {}
    for key, raw in value.items():
        try:
            check_label_key(key)
        except FieldError as exc:
            raise FieldError(f"key {str(key)[:32]!r}: {exc}", (key,)) from None
        values = [raw] if isinstance(raw, str) else raw
        if not isinstance(values, list) or not values:
            raise FieldError(f"expected a string or a list of strings, got {_what(raw)}", (key,))
        for i, v in enumerate(values):
            where = (key, i) if isinstance(raw, list) else (key,)
            if not isinstance(v, str):
                raise FieldError(f"expected a string, got {_what(v)}", where)
            try:
                check_label_value_pattern(v)
            except FieldError as exc:
                raise FieldError(str(exc), where) from None
        if key == "*" and values != ["*"]:
            raise FieldError("the wildcard key '*' only takes the value '*'", (key,))
        out[key] = list(values)
    return out


def _unstructure_selector(value: Mapping[str, list[str]]) -> dict[str, Any]:
    return {k: v[0] if len(v) == 1 else list(v) for k, v in value.items()}


def _check_json(value: object, path: tuple[str | int, ...] = (), depth: int = 0) -> None:
    if depth > 32:
        raise FieldError("nested too deeply", path)
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FieldError("numbers must be finite", path)
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, (*path, i), depth + 1)
        return
    if isinstance(value, Mapping):
        for k, item in value.items():
            if not isinstance(k, str):
                raise FieldError("keys must be strings", path)
            _check_json(item, (*path, k), depth + 1)
        return
    raise FieldError(f"expected a JSON value, got {_what(value)}", path)


def _structure_json(value: object, _type: object) -> object:
    _check_json(value)
    return value


def _check_public_key(value: object, _type: object) -> str:
    if not isinstance(value, str):
        raise FieldError(f"expected a string, got {_what(value)}")
    if not _PUBLIC_KEY.fullmatch(value.strip()):
        raise FieldError("expected an OpenSSH public key line like 'ssh-ed25519 AAAA...'")
    return value.strip()


def _name_hook(value: object, _type: object) -> str:
    return check_name(value)


def _structure_resource(value: object, _type: object) -> Any:
    if not isinstance(value, Mapping):
        raise FieldError(f"expected a mapping, got {_what(value)}")
    kind = value.get("kind")
    if kind not in _BY_KIND:
        shown = repr(kind)[:32] if isinstance(kind, str) else _what(kind)
        raise FieldError(f"expected one of: {', '.join(KINDS)} (got {shown})", ("kind",))
    return converter.structure(value, _BY_KIND[kind])


def attrs_structure_fn(cls: Any, **hooks: Callable[[object, object], Any]) -> Any:
    """The converter's hook for an attrs class, refusing non-mappings politely.

    Args:
        cls: the attrs class.
        hooks: per-attribute structure hooks that replace the type's own.
    """
    fn = cattrs.gen.make_dict_structure_fn(
        cls,
        converter,
        _cattrs_forbid_extra_keys=True,
        **{name: cattrs.gen.override(struct_hook=hook) for name, hook in hooks.items()},
    )

    def hook(value: object, t: object) -> Any:
        if not isinstance(value, Mapping):
            raise FieldError(f"expected a mapping, got {_what(value)}")
        return fn(value, t)

    return hook


converter.register_structure_hook_factory(attrs.has, lambda cls: attrs_structure_fn(cls))
converter.register_structure_hook(dt.datetime, _structure_datetime)
converter.register_unstructure_hook(dt.datetime, _unstructure_datetime)
converter.register_structure_hook(dt.timedelta, _structure_duration)
converter.register_unstructure_hook(dt.timedelta, format_duration)
converter.register_structure_hook(bytes, _structure_bytes)
converter.register_unstructure_hook(bytes, _unstructure_bytes)
converter.register_structure_hook(Name, _name_hook)
converter.register_structure_hook(LabelKey, lambda v, _t: check_label_key(v))
converter.register_structure_hook(LoginTemplate, lambda v, _t: check_login_template(v))
converter.register_structure_hook(LabelSelector, _structure_selector)
converter.register_unstructure_hook(LabelSelector, _unstructure_selector)
converter.register_structure_hook(JsonValue, _structure_json)
converter.register_structure_hook(PublicKeyLine, _check_public_key)
converter.register_structure_hook_func(lambda t: t == Resource, _structure_resource)


def _attrs_unstructure_factory(cls: Any, conv: cattrs.Converter) -> Callable[[Any], Any]:
    """Leave out None and empty collections where those are the defaults: short dumps."""
    base = cattrs.gen.make_dict_unstructure_fn(cls, conv)
    optional = [a.name for a in attrs.fields(cls) if a.default is None]
    empty = [
        a.name
        for a in attrs.fields(cls)
        if isinstance(a.default, attrs.Factory) and a.default.factory in (list, dict)  # type: ignore[arg-type]
    ]

    def hook(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = base(obj)
        for name in optional:
            if out.get(name, 0) is None:
                del out[name]
        for name in empty:
            if out.get(name, 0) in ([], {}):
                del out[name]
        return out

    return hook


converter.register_unstructure_hook_factory(attrs.has, _attrs_unstructure_factory)


# --- errors with paths and lines --------------------------------------------------

Path = tuple[str | int, ...]
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def format_path(path: Iterable[object]) -> str:
    """``("spec", "allow", "logins", 2)`` -> ``"spec.allow.logins[2]"``."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _IDENT.fullmatch(part):
            out += f".{part}" if out else part
        else:  # YAML keys may be anything hashable: null, true, 1.5, a date
            out += f"[{str(part)[:32]!r}]"
    return out


def _problems(exc: BaseException, path: Path) -> list[tuple[Path, str]]:
    """Flatten a cattrs error tree into (path, message) pairs."""
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        known = sorted(a.name for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else []
        return [
            (
                (*path, key),
                "unknown key" + (f" (expected one of: {', '.join(known)})" if known else ""),
            )
            for key in sorted(exc.extra_fields, key=str)
        ]
    if isinstance(exc, cattrs.BaseValidationError):
        out: list[tuple[Path, str]] = []
        for sub in exc.exceptions:
            step: Path = ()
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, cattrs.AttributeValidationNote):
                    step = (note.name,)
                elif isinstance(note, cattrs.IterableValidationNote):
                    step = (note.index,)  # type: ignore[assignment]
            out.extend(_problems(sub, path + step))
        return out
    if isinstance(exc, KeyError):
        return [(path, "required key missing")]
    if isinstance(exc, FieldError):
        return [(path + exc.path, str(exc))]
    if isinstance(exc, cattrs.StructureHandlerNotFoundError):
        return [(path, "cannot be read (no structure hook): a bug in trioport")]
    return [(path, str(exc) or type(exc).__name__)]


def raise_problems(
    problems: list[tuple[Path, str]],
    *,
    source: str | None,
    lines: Mapping[Path, int] | None,
) -> typing.NoReturn:
    """Raise one :class:`ConfigError` for ``problems`` (the first one leads)."""

    def line_of(path: Path) -> int | None:
        if not lines:
            return None
        for n in range(len(path), -1, -1):
            if path[:n] in lines:
                return lines[path[:n]]
        return None

    # Report in the order a reader meets them in the file.
    problems = sorted(problems, key=lambda p: line_of(p[0]) or 0)
    first_path, first_msg = problems[0]
    message = first_msg
    for path, msg in problems[1:20]:
        message += "\n" + str(
            ConfigError(msg, path=source, key=format_path(path) or None, line=line_of(path))
        )
    if len(problems) > 20:
        message += f"\n... and {len(problems) - 20} more"
    raise ConfigError(
        message,
        path=source,
        key=format_path(first_path) or None,
        line=line_of(first_path),
    )


def structure(
    data: object,
    cls: Any,
    *,
    source: str | None = None,
    lines: Mapping[Path, int] | None = None,
) -> Any:
    """Structure ``data`` as ``cls`` with the converter, or raise :class:`ConfigError`.

    Args:
        data: plain data from JSON or YAML.
        cls: an attrs class, or :data:`Resource` to pick the class from ``kind``.
        source: the file name to put in the error, if any.
        lines: path -> line number, as :func:`yaml_documents` returns them.
    """
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, FieldError, KeyError, ValueError, TypeError) as exc:
        raise_problems(_problems(exc, ()) or [((), str(exc))], source=source, lines=lines)


# --- YAML with line numbers -------------------------------------------------------

#: After aliases are expanded, no document may have more nodes than this.
MAX_YAML_NODES = 200_000


def _check_node(root: yaml.Node, source: str | None) -> None:
    """Refuse duplicate keys, self-referring aliases and alias bombs in a composed document."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        # Expanded size, memoised per node, so an alias bomb costs little to find.
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in active:
            raise ConfigError("a YAML alias refers to itself", path=source, line=_line(node))
        active.add(id(node))
        n = 1
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for knode, vnode in node.value:
                if isinstance(knode, yaml.ScalarNode) and knode.tag != "tag:yaml.org,2002:merge":
                    if (knode.tag, knode.value) in keys:
                        raise ConfigError(
                            f"duplicate key {knode.value[:32]!r}", path=source, line=_line(knode)
                        )
                    keys.add((knode.tag, knode.value))
                n += size(knode) + size(vnode)
        elif isinstance(node, yaml.SequenceNode):
            n += sum(size(v) for v in node.value)
        active.discard(id(node))
        sizes[id(node)] = n
        return n

    total = size(root)
    if total > MAX_YAML_NODES:
        raise ConfigError(f"document too large ({total} nodes after aliases)", path=source)


def _index_lines(loader: yaml.SafeLoader, root: yaml.Node) -> dict[Path, int]:
    """Map every key path of a constructed document to its 1-based line number."""
    lines: dict[Path, int] = {(): _line(root)}
    seen: set[int] = set()

    def walk(node: yaml.Node, path: Path) -> None:
        if id(node) in seen:  # an alias: indexed where it was defined
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            # Merged keys (<<) come first in the flattened node, local ones override.
            for knode, vnode in node.value:
                key = loader.construct_object(knode, deep=True)
                if isinstance(key, str | int) and not isinstance(key, bool):
                    lines[(*path, key)] = _line(knode)
                    walk(vnode, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = _line(item)
                walk(item, (*path, i))

    walk(root, ())
    return lines


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def yaml_documents(text: str, source: str | None = None) -> list[tuple[Any, dict[Path, int]]]:
    """Parse every YAML document in ``text`` with the safe loader.

    Returns:
        A ``(data, lines)`` pair per document, ``lines`` mapping key paths to lines.

    Raises:
        ConfigError: a syntax error, a duplicate key or an alias bomb, with its line.
    """
    try:
        # The reader checks for unprintable characters as it is built.
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=source) from None
    docs: list[tuple[Any, dict[Path, int]]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _check_node(node, source)
            data = loader.construct_document(node)
            docs.append((data, _index_lines(loader, node)))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"invalid YAML: {problem}", path=source, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=source) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", path=source) from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
        # PyYAML's safe constructors raise these, not YAMLError, for a malformed
        # scalar such as the implicit timestamp 2001-13-45.
        raise ConfigError(
            f"invalid YAML value: {type(exc).__name__}: {str(exc)[:80]}", path=source
        ) from None
    finally:
        loader.dispose()
    return docs


# --- public (de)serialisation -----------------------------------------------------


def to_dict(obj: Any, *, secrets: bool = False) -> dict[str, Any]:
    """A resource as plain data; secrets are stripped unless ``secrets=True``."""
    if not secrets and hasattr(obj, "public"):
        obj = obj.public()
    data: dict[str, Any] = converter.unstructure(obj)
    return data


def from_dict(data: object, cls: Any = Resource, *, source: str | None = None) -> Any:
    """Plain data to a resource (``cls`` = :data:`Resource` picks by ``kind``)."""
    return structure(data, cls, source=source)


def to_json(obj: Any, *, secrets: bool = False, indent: int | None = None) -> str:
    """A resource as JSON; see :func:`to_dict` for ``secrets``."""
    return json.dumps(to_dict(obj, secrets=secrets), indent=indent, ensure_ascii=False)


def from_json(text: str | bytes, cls: Any = Resource, *, source: str | None = None) -> Any:
    """JSON to a resource. Raises :class:`ConfigError` for bad JSON or a bad resource."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"invalid JSON: {exc}", path=source) from None
    return structure(data, cls, source=source)


def to_yaml(obj: Any | list[Any], *, secrets: bool = False) -> str:
    """One resource, or a list of them as ``---``-separated documents, as YAML."""
    objs = obj if isinstance(obj, list) else [obj]
    return yaml.safe_dump_all(
        [to_dict(o, secrets=secrets) for o in objs],
        sort_keys=False,
        allow_unicode=False,  # escaped: raw NEL (\x85) would not read back
        default_flow_style=False,
        explicit_start=len(objs) > 1,
    )


def from_yaml_all(text: str, cls: Any = Resource, *, source: str | None = None) -> list[Any]:
    """Every resource in a YAML stream (``tctl create`` files may hold several)."""
    out = []
    for data, lines in yaml_documents(text, source):
        if data is None:
            continue
        out.append(structure(data, cls, source=source, lines=lines))
    return out


def from_yaml(text: str, cls: Any = Resource, *, source: str | None = None) -> Any:
    """Exactly one resource from YAML."""
    found = from_yaml_all(text, cls, source=source)
    if len(found) != 1:
        raise ConfigError(f"expected one YAML document, found {len(found)}", path=source)
    return found[0]
