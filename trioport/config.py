"""The configuration file (``--config``, default ``/etc/trioport.yaml``) and its flags.

The file is YAML, and its keys follow ``teleport.yaml`` wherever Teleport has the
same setting (``teleport.nodename``, ``auth_service.listen_addr``, ...), so a
Teleport user can read it. It is loaded into attrs classes with the same strict
cattrs converter as the resources (:mod:`trioport.resources`): an unknown or
mistyped key is an error naming the file, the line and the key path, never a
silently ignored setting. ``docs/config.md`` is the reference.

Command-line flags of ``trioport run`` override the file through
:func:`apply_flags`, which then checks the settings that depend on each other
(:func:`validate_config`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from trioport.errors import ConfigError
from trioport.resources import (
    FieldError,
    LabelKey,
    Name,
    attrs_structure_fn,
    check_label_key,
    check_name,
    converter,
    mask_secret,
    raise_problems,
    structure,
    yaml_documents,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DATA_DIR",
    "Address",
    "AuthService",
    "Authentication",
    "CommandLabelConfig",
    "Config",
    "ConnectionLimits",
    "Global",
    "LogConfig",
    "ProxyService",
    "Rate",
    "SSHService",
    "StaticToken",
    "StorageConfig",
    "apply_flags",
    "dump_config",
    "load_config",
    "parse_addr",
    "parse_labels",
    "validate_config",
]

DEFAULT_CONFIG_PATH = "/etc/trioport.yaml"
DEFAULT_DATA_DIR = "/var/lib/trioport"

AUTH_PORT = 3025
NODE_PORT = 3022
PROXY_SSH_PORT = 3023
PROXY_WEB_PORT = 3080
DIAG_PORT = 3000
#: Services listen on every interface by default, as Teleport's do.
ANY_HOST = "0.0.0.0"  # noqa: S104

SERVICE_NAMES = ("auth", "proxy", "node")

# --- addresses --------------------------------------------------------------------


@attrs.frozen
class Address:
    """A ``host:port`` pair; ``str()`` gives it back (IPv6 hosts in brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


def parse_addr(
    text: str, default_port: int, *, default_host: str = ANY_HOST, allow_zero_port: bool = False
) -> Address:
    """Parse ``host:port``, ``host``, ``:port``, ``[v6]:port`` or ``[v6]``.

    Args:
        text: the address as written.
        default_port: the port when none is given.
        default_host: the host when none is given (``:3025``).
        allow_zero_port: accept port 0 (listen on any free port; tests use it).

    Raises:
        ValueError: with a message fit for the user.
    """
    s = text.strip()
    if not s:
        raise ValueError("expected host:port, got an empty string")
    if "://" in s:
        raise ValueError("expected host:port, not a URL")
    port_text: str | None = None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError("missing ']' after an IPv6 address")
        host, rest = s[1:end], s[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected ':port' after ']'")
            port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("not an IPv6 address inside [...]") from None
    elif s.count(":") > 1:
        raise ValueError("write an IPv6 address in brackets, like [::1]:3025")
    else:
        host, sep, port_part = s.partition(":")
        port_text = port_part if sep else None
        host = host or default_host
        if not _HOSTNAME.fullmatch(host):
            raise ValueError("not a host name or IP address")
    port = default_port
    if port_text is not None:
        if not port_text.isdigit() or len(port_text) > 5:
            raise ValueError("the port must be a number from 1 to 65535")
        port = int(port_text)
    if not (0 if allow_zero_port else 1) <= port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return Address(host or default_host, port)


def _addr_hook(default_port: int, *, zero: bool = False) -> Callable[[object, object], Address]:
    def hook(value: object, _type: object) -> Address:
        if isinstance(value, Address):
            return value
        if not isinstance(value, str):
            raise FieldError("expected host:port as a string")
        try:
            return parse_addr(value, default_port, allow_zero_port=zero)
        except ValueError as exc:
            raise FieldError(str(exc)) from None

    return hook


def _opt_addr_hook(default_port: int, *, zero: bool = False) -> Callable[[object, object], Any]:
    inner = _addr_hook(default_port, zero=zero)
    return lambda v, t: None if v is None else inner(v, t)


def _addr_list_hook(default_port: int) -> Callable[[object, object], list[Address]]:
    inner = _addr_hook(default_port)

    def hook(value: object, t: object) -> list[Address]:
        if not isinstance(value, list):
            raise FieldError("expected a list of host:port strings")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(inner(item, t))
            except FieldError as exc:
                raise FieldError(str(exc), (i,)) from None
        return out

    return hook


converter.register_unstructure_hook(Address, str)


# --- static tokens ----------------------------------------------------------------


@attrs.frozen(repr=False)
class StaticToken:
    """A join token from the file, written ``"node:TOKEN"`` or ``"node,proxy:TOKEN"``."""

    roles: tuple[str, ...]
    token: str

    def __str__(self) -> str:
        return f"{','.join(self.roles)}:{self.token}"

    def __repr__(self) -> str:
        return f"StaticToken(roles={self.roles!r}, token={mask_secret(self.token)!r})"


def _structure_static_token(value: object, _type: object) -> StaticToken:
    if not isinstance(value, str) or ":" not in value:
        raise FieldError("expected 'ROLES:TOKEN', like 'node:abc123' or 'node,proxy:abc123'")
    roles_text, _, token = value.partition(":")
    roles = tuple(r.strip() for r in roles_text.split(","))
    bad = [r for r in roles if r not in SERVICE_NAMES]
    if bad:
        raise FieldError(f"unknown role {bad[0][:16]!r} (expected node, proxy or auth)")
    if not token.strip():
        raise FieldError("the token after ':' must not be empty")
    return StaticToken(roles, token.strip())


converter.register_structure_hook(StaticToken, _structure_static_token)
converter.register_unstructure_hook(StaticToken, str)


# --- the sections -----------------------------------------------------------------


def _hostname() -> str:
    name = socket.gethostname().strip() or "localhost"
    return name if _HOSTNAME.fullmatch(name) else "localhost"


def _secret_repr(value: object) -> str:
    return repr(mask_secret(value)) if isinstance(value, str) else repr(value)


@attrs.define(kw_only=True)
class StorageConfig:
    """``teleport.storage``: where the auth service keeps the cluster's state."""

    type: Literal["sqlite", "etcd"] = "sqlite"
    #: SQLite file; relative to ``data_dir``; default ``<data_dir>/backend/sqlite.db``.
    path: str | None = None
    #: etcd endpoints (``https://host:2379``).
    peers: list[str] = attrs.Factory(list)
    #: etcd key prefix, so several clusters can share one etcd.
    prefix: str = "/trioport"
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


@attrs.define(kw_only=True)
class LogConfig:
    """``teleport.log``."""

    #: DEBUG, INFO, WARN or ERROR (any case; WARNING is read as WARN).
    severity: Literal["DEBUG", "INFO", "WARN", "ERROR"] = "INFO"
    #: ``stderr``, ``stdout``, or a file path.
    output: str = "stderr"


def _structure_severity(value: object, _type: object) -> str:
    if isinstance(value, str):
        v = value.strip().upper()
        v = "WARN" if v == "WARNING" else v
        if v in ("DEBUG", "INFO", "WARN", "ERROR"):
            return v
    raise FieldError("expected one of: DEBUG, INFO, WARN, ERROR")


@attrs.define(kw_only=True)
class Rate:
    """One entry of ``teleport.connection_limits.rates``: a token bucket per source.

    A source may make ``burst`` requests at once, then ``average`` per ``period``.
    """

    period: dt.timedelta = dt.timedelta(minutes=1)
    average: int = 20
    burst: int = 40

    @property
    def per_minute(self) -> float:
        """The average as requests per minute."""
        return self.average * 60.0 / max(self.period.total_seconds(), 1e-9)


@attrs.define(kw_only=True)
class ConnectionLimits:
    """``teleport.connection_limits``: limits every service of this process applies.

    Teleport keeps ``max_connections``, ``max_users`` and ``rates`` here and the idle
    and keep-alive settings in ``auth_service``; trioport keeps them all here
    because each process enforces them on its own listeners.
    """

    #: Open connections per service, authenticated or not.
    max_connections: int = 15000
    #: Open connections per service from one source address.
    max_connections_per_source: int = 5000
    #: Distinct source addresses with open connections to a service at once.
    max_users: int = 10000
    #: Connections that have not finished authenticating, all sources together.
    max_unauthenticated: int = 100
    #: Connections that have not finished authenticating, from one source address.
    max_unauthenticated_per_source: int = 10
    #: Session channels open at once on one connection (OpenSSH MaxSessions).
    max_sessions: int = 10
    #: Channels of any kind (sessions, port forwards) open at once on one connection
    #: (``ConnectionConfig.max_channels`` of the SSH core).
    max_channels: int = 100
    #: How long a connection may take to authenticate (OpenSSH LoginGraceTime).
    login_grace_time: dt.timedelta = dt.timedelta(seconds=30)
    #: Close a connection idle this long (0s: never); roles can only shorten it.
    client_idle_timeout: dt.timedelta = dt.timedelta(minutes=15)
    #: Send a keep-alive after this much silence (0s: never).
    keep_alive_interval: dt.timedelta = dt.timedelta(minutes=5)
    #: Close after this many unanswered keep-alives.
    keep_alive_count_max: int = 3
    #: Per-source request rates of the proxy's HTTPS endpoints that take credentials.
    rates: list[Rate] = attrs.Factory(lambda: [Rate()])
    #: At a graceful stop, how long running sessions may go on before they are
    #: disconnected with a reason.
    shutdown_timeout: dt.timedelta = dt.timedelta(seconds=30)

    def server_limits(self) -> Any:
        """These limits as the SSH server takes them (:class:`trioport.ssh.ServerLimits`)."""
        from trioport.ssh.server import ServerLimits

        return ServerLimits(
            login_grace=self.login_grace_time.total_seconds(),
            max_connections=self.max_connections,
            max_connections_per_source=self.max_connections_per_source,
            max_sources=self.max_users,
            max_unauthenticated=self.max_unauthenticated,
            max_unauthenticated_per_source=self.max_unauthenticated_per_source,
            max_sessions=self.max_sessions,
            keepalive_interval=self.keep_alive_interval.total_seconds(),
            keepalive_count=self.keep_alive_count_max,
        )


@attrs.define(kw_only=True)
class Global:
    """The ``teleport:`` section: settings shared by every service of this process."""

    nodename: Name = attrs.Factory(_hostname)  # type: ignore[assignment]
    data_dir: str = DEFAULT_DATA_DIR
    #: The join token a node or proxy presents on its first start.
    auth_token: str | None = attrs.field(default=None, repr=_secret_repr)
    #: Where the auth service is (port 3025 if not given).
    auth_servers: list[Address] = attrs.Factory(list)
    #: Serves /healthz, /readyz and /metrics when set (port 3000 if not given).
    diag_addr: Address | None = None
    storage: StorageConfig = attrs.Factory(StorageConfig)
    log: LogConfig = attrs.Factory(LogConfig)
    connection_limits: ConnectionLimits = attrs.Factory(ConnectionLimits)


@attrs.define(kw_only=True)
class Authentication:
    """``auth_service.authentication``: local users with a password and a TOTP code."""

    type: Literal["local"] = "local"
    second_factor: Literal["otp"] = "otp"


@attrs.define(kw_only=True)
class AuthService:
    """``auth_service``: the certificate authority and the cluster's state."""

    enabled: bool = True
    listen_addr: Address = Address(ANY_HOST, AUTH_PORT)
    #: The cluster's name; defaults to ``teleport.nodename`` (see :attr:`Config.cluster_name`).
    cluster_name: Name | None = None
    #: Static join tokens, ``"node:TOKEN"``; prefer short-lived ``tctl tokens add`` ones.
    tokens: list[StaticToken] = attrs.Factory(list)
    #: ``node`` records sessions on the node; ``off`` records nothing.
    session_recording: Literal["node", "off"] = "node"
    authentication: Authentication = attrs.Factory(Authentication)


@attrs.define(kw_only=True)
class CommandLabelConfig:
    """One entry of ``ssh_service.commands``: a label whose value a command prints."""

    name: LabelKey
    command: list[str]
    period: dt.timedelta = dt.timedelta(minutes=1)


@attrs.define(kw_only=True)
class SSHService:
    """``ssh_service``: this machine as a node."""

    enabled: bool = True
    listen_addr: Address = Address(ANY_HOST, NODE_PORT)
    labels: dict[LabelKey, str] = attrs.Factory(dict)
    commands: list[CommandLabelConfig] = attrs.Factory(list)


@attrs.define(kw_only=True)
class ProxyService:
    """``proxy_service``: the SSH jump host and the HTTPS endpoint for tsh and browsers."""

    enabled: bool = True
    listen_addr: Address = Address(ANY_HOST, PROXY_SSH_PORT)
    web_listen_addr: Address = Address(ANY_HOST, PROXY_WEB_PORT)
    #: PEM files; when both are absent a self-signed certificate is made on first start.
    https_cert_file: str | None = None
    https_key_file: str | None = None
    #: The address users reach the web endpoint at (port 3080 if not given).
    public_addr: Address | None = None


@attrs.define(kw_only=True)
class Config:
    """The whole configuration file."""

    version: Literal["v1"] = "v1"
    teleport: Global = attrs.Factory(Global)
    auth_service: AuthService = attrs.Factory(AuthService)
    ssh_service: SSHService = attrs.Factory(SSHService)
    proxy_service: ProxyService = attrs.Factory(ProxyService)

    @classmethod
    def default(cls, data_dir: str = DEFAULT_DATA_DIR) -> Config:
        """Every default, with ``data_dir`` set: what ``trioport run`` uses with no file."""
        return cls(teleport=Global(data_dir=data_dir))

    @property
    def cluster_name(self) -> str:
        """``auth_service.cluster_name``, or the node name when it is not set."""
        return self.auth_service.cluster_name or self.teleport.nodename

    @property
    def storage_path(self) -> str:
        """The SQLite file: ``storage.path`` (relative to ``data_dir``) or the default."""
        path = self.teleport.storage.path or os.path.join("backend", "sqlite.db")
        return os.path.join(self.teleport.data_dir, path)

    def enabled_services(self) -> list[str]:
        """The services to start, in start order: auth, proxy, node."""
        flags = (self.auth_service.enabled, self.proxy_service.enabled, self.ssh_service.enabled)
        return [name for name, on in zip(SERVICE_NAMES, flags) if on]


def _register(cls: type, **hooks: Callable[[object, object], Any]) -> None:
    converter.register_structure_hook(cls, attrs_structure_fn(cls, **hooks))


_register(LogConfig, severity=_structure_severity)
_register(
    Global,
    auth_servers=_addr_list_hook(AUTH_PORT),
    diag_addr=_opt_addr_hook(DIAG_PORT, zero=True),
)
_register(AuthService, listen_addr=_addr_hook(AUTH_PORT, zero=True))
_register(SSHService, listen_addr=_addr_hook(NODE_PORT, zero=True))
_register(
    ProxyService,
    listen_addr=_addr_hook(PROXY_SSH_PORT, zero=True),
    web_listen_addr=_addr_hook(PROXY_WEB_PORT, zero=True),
    public_addr=_opt_addr_hook(PROXY_WEB_PORT),
)


# --- checks across keys -----------------------------------------------------------

Problems = list[tuple[tuple[str | int, ...], str]]


def _file_problems(cfg: Config) -> Problems:
    """What is wrong within the file itself, with the key paths to blame."""
    out: Problems = []
    g = cfg.teleport
    st = g.storage
    if not g.data_dir:
        out.append((("teleport", "data_dir"), "must not be empty"))
    if g.auth_token is not None and not g.auth_token.strip():
        out.append((("teleport", "auth_token"), "must not be empty"))
    if st.type == "etcd" and not st.peers:
        out.append((("teleport", "storage", "peers"), "type etcd needs at least one peer URL"))
    if st.type == "sqlite":
        for key in ("peers", "tls_ca_file", "tls_cert_file", "tls_key_file"):
            if getattr(st, key):
                out.append((("teleport", "storage", key), "only used with type: etcd"))
    for i, peer in enumerate(st.peers):
        url = urlsplit(peer)
        if url.scheme not in ("http", "https") or not url.hostname:
            out.append(
                (("teleport", "storage", "peers", i), "expected a URL like https://host:2379")
            )
    if bool(st.tls_cert_file) != bool(st.tls_key_file):
        out.append(
            (
                ("teleport", "storage", "tls_key_file"),
                "give tls_cert_file and tls_key_file together",
            )
        )
    if st.path == "":
        out.append((("teleport", "storage", "path"), "must not be empty"))
    lim = g.connection_limits
    where = ("teleport", "connection_limits")
    for key in (
        "max_connections",
        "max_connections_per_source",
        "max_users",
        "max_unauthenticated",
        "max_unauthenticated_per_source",
        "max_sessions",
        "max_channels",
        "keep_alive_count_max",
    ):
        if getattr(lim, key) < 1:
            out.append(((*where, key), "must be at least 1"))
    if 1 <= lim.max_unauthenticated < lim.max_unauthenticated_per_source:
        out.append(
            ((*where, "max_unauthenticated_per_source"), "must not exceed max_unauthenticated")
        )
    for i, rate in enumerate(lim.rates):
        if rate.period < dt.timedelta(seconds=1):
            out.append(((*where, "rates", i, "period"), "must be at least 1s"))
        for key in ("average", "burst"):
            if getattr(rate, key) < 1:
                out.append(((*where, "rates", i, key), "must be at least 1"))
    if lim.login_grace_time < dt.timedelta(seconds=1):
        out.append((("teleport", "connection_limits", "login_grace_time"), "must be at least 1s"))
    px = cfg.proxy_service
    if bool(px.https_cert_file) != bool(px.https_key_file):
        out.append(
            (
                ("proxy_service", "https_key_file"),
                "give https_cert_file and https_key_file together",
            )
        )
    names: set[str] = set()
    for i, cmd in enumerate(cfg.ssh_service.commands):
        where = ("ssh_service", "commands", i)
        if cmd.name in names or cmd.name in cfg.ssh_service.labels:
            out.append(((*where, "name"), f"label {cmd.name!r} is defined twice"))
        names.add(cmd.name)
        if not cmd.command or not cmd.command[0]:
            out.append(((*where, "command"), "must name a program to run"))
        if cmd.period < dt.timedelta(seconds=1):
            out.append(((*where, "period"), "must be at least 1s"))
    return out


def _service_problems(cfg: Config) -> Problems:
    out: Problems = []
    if not cfg.enabled_services():
        out.append((("auth_service", "enabled"), "no service is enabled (auth, proxy or node)"))
    needs_auth = cfg.proxy_service.enabled or cfg.ssh_service.enabled
    if needs_auth and not cfg.auth_service.enabled and not cfg.teleport.auth_servers:
        out.append(
            (("teleport", "auth_servers"), "required when this process runs no auth_service")
        )
    return out


def validate_config(config: Config, *, source: str | None = None) -> None:
    """Check the settings that depend on each other; raise :class:`ConfigError` if wrong."""
    problems = _file_problems(config) + _service_problems(config)
    if problems:
        raise_problems(problems, source=source, lines=None)


# --- loading ----------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check a configuration file.

    An empty file gives every default. The checks that depend on which services run
    wait for :func:`apply_flags` (flags may supply what the file lacks).

    Raises:
        ConfigError: unreadable file, bad YAML, unknown key or bad value, naming the
            file, the line and the key.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ConfigError("the file is not UTF-8 text", path=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", path=source) from None
    return loads_config(text, source=source)


def loads_config(text: str, *, source: str | None = None) -> Config:
    """:func:`load_config` for text already in memory (``source`` names it in errors)."""
    docs = yaml_documents(text, source)
    if len(docs) > 1:
        raise ConfigError("expected one YAML document, found several", path=source)
    if not docs or docs[0][0] is None:
        return Config()
    data, lines = docs[0]
    cfg: Config = structure(data, Config, source=source, lines=lines)
    problems = _file_problems(cfg)
    if problems:
        raise_problems(problems, source=source, lines=lines)
    return cfg


def dump_config(config: Config) -> str:
    """The configuration as YAML that :func:`loads_config` reads back unchanged."""
    import yaml

    return yaml.safe_dump(converter.unstructure(config), sort_keys=False, default_flow_style=False)


# --- flags ------------------------------------------------------------------------


def parse_labels(text: str) -> dict[str, str]:
    """``"env=prod,team=db"`` -> ``{"env": "prod", "team": "db"}`` (the ``--labels`` flag)."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"expected key=value, got {item.strip()[:32]!r}", key="--labels")
        try:
            check_label_key(key)
        except FieldError as exc:
            raise ConfigError(f"label {key[:32]!r}: {exc}", key="--labels") from None
        labels[key] = value.strip()
    return labels


def _split(value: str | Iterable[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [i.strip() for i in items if i.strip()]


def apply_flags(
    config: Config,
    *,
    roles: str | Sequence[str] | None = None,
    data_dir: str | None = None,
    nodename: str | None = None,
    auth_servers: str | Sequence[str] | None = None,
    token: str | None = None,
    labels: str | None = None,
    diag_addr: str | None = None,
) -> Config:
    """Return a copy of ``config`` with ``trioport run``'s flags applied, then validated.

    Args:
        config: from :func:`load_config` or :meth:`Config.default`.
        roles: ``"auth,proxy,node"``: exactly these services run.
        data_dir: ``--data-dir``.
        nodename: ``--nodename``.
        auth_servers: ``--auth-server``, one or a comma-separated list of host[:port].
        token: ``--token``, the join token.
        labels: ``--labels k=v,k2=v2``, merged over the file's static labels.
        diag_addr: ``--diag-addr`` host:port for /healthz, /readyz and /metrics.

    Raises:
        ConfigError: a bad flag (its key is the flag's name), or settings that do not
            fit together.
    """
    cfg: Config = structure(converter.unstructure(config), Config, source="flags")
    g = cfg.teleport
    if roles is not None:
        wanted = _split(roles)
        bad = [r for r in wanted if r not in SERVICE_NAMES]
        if bad or not wanted:
            raise ConfigError(
                f"expected a list of auth, proxy, node (got {','.join(wanted)[:48]!r})",
                key="--roles",
            )
        cfg.auth_service.enabled = "auth" in wanted
        cfg.proxy_service.enabled = "proxy" in wanted
        cfg.ssh_service.enabled = "node" in wanted
    if data_dir is not None:
        if not data_dir:
            raise ConfigError("must not be empty", key="--data-dir")
        g.data_dir = data_dir
    if nodename is not None:
        try:
            g.nodename = Name(check_name(nodename, "the node name"))
        except FieldError as exc:
            raise ConfigError(str(exc), key="--nodename") from None
    if auth_servers is not None:
        try:
            g.auth_servers = [parse_addr(a, AUTH_PORT) for a in _split(auth_servers)]
        except ValueError as exc:
            raise ConfigError(str(exc), key="--auth-server") from None
    if token is not None:
        if not token.strip():
            raise ConfigError("must not be empty", key="--token")
        g.auth_token = token.strip()
    if labels is not None:
        cfg.ssh_service.labels.update(parse_labels(labels))  # type: ignore[arg-type]
    if diag_addr is not None:
        try:
            g.diag_addr = parse_addr(diag_addr, DIAG_PORT, allow_zero_port=True)
        except ValueError as exc:
            raise ConfigError(str(exc), key="--diag-addr") from None
    validate_config(cfg)
    return cfg
