"""The configuration of one SSH :class:`~trioport.sshproto.connection.Connection`.

Everything here is data or a pure policy function: the core never does I/O to make
a decision. Defaults are safe: only modern algorithms (no SHA-1, no ECDSA host keys
unless asked for), OpenSSH's limits (six authentication tries, 2 MiB channel
windows, 32 KiB channel packets), and a rekey every GiB or hour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError
from . import ciphers
from .kex import KEX_METHODS
from .keys import CERT_SUFFIX, HOST_KEY_ALGORITHMS, PrivateKey
from .state import Role

__all__ = [
    "DEFAULT_CIPHERS",
    "DEFAULT_HOST_KEY_ALGORITHMS",
    "DEFAULT_KEX_ALGORITHMS",
    "DEFAULT_MACS",
    "DEFAULT_PUBKEY_ALGORITHMS",
    "ConnectionConfig",
    "HostKey",
]

#: Key exchange, best first: the post-quantum hybrid (OpenSSH 9.9's default), then
#: curve25519 (RFC 8731) under both its names.
DEFAULT_KEX_ALGORITHMS: tuple[str, ...] = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
)
#: Host-key algorithms offered (server) or accepted (client). Certificates first, so
#: a server with a host certificate presents it. ECDSA and ssh-rsa are opt-in.
DEFAULT_HOST_KEY_ALGORITHMS: tuple[str, ...] = (
    "ssh-ed25519" + CERT_SUFFIX,
    "rsa-sha2-512" + CERT_SUFFIX,
    "rsa-sha2-256" + CERT_SUFFIX,
    "ssh-ed25519",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
DEFAULT_CIPHERS: tuple[str, ...] = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
DEFAULT_MACS: tuple[str, ...] = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
)
#: Signature algorithms a server accepts for user keys (OpenSSH's
#: PubkeyAcceptedAlgorithms without the sk-* and SHA-1 ones).
DEFAULT_PUBKEY_ALGORITHMS: tuple[str, ...] = (
    "ssh-ed25519" + CERT_SUFFIX,
    "ecdsa-sha2-nistp256" + CERT_SUFFIX,
    "ecdsa-sha2-nistp384" + CERT_SUFFIX,
    "ecdsa-sha2-nistp521" + CERT_SUFFIX,
    "rsa-sha2-512" + CERT_SUFFIX,
    "rsa-sha2-256" + CERT_SUFFIX,
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)

#: Methods a server can run (RFC 4252 §7, §8; RFC 4256).
AUTH_METHODS = frozenset({"publickey", "password", "keyboard-interactive"})

#: Largest max_packet we advertise for a channel: the payload must still fit in a
#: binary packet with the CHANNEL_DATA header and padding.
MAX_CHANNEL_PACKET = ciphers.MAX_PACKET_SIZE - 1024


@dataclass(frozen=True, slots=True)
class HostKey:
    """A server host key, optionally with its OpenSSH host certificate blob."""

    private_key: PrivateKey
    certificate_blob: bytes | None = None


def _names(value: Sequence[str], key: str, known: object) -> tuple[str, ...]:
    names = tuple(value)
    if not names:
        raise ConfigError("must list at least one algorithm", key=key)
    for name in names:
        if name not in known:  # type: ignore[operator]
            raise ConfigError(f"unknown algorithm {name!r}", key=key)
    return names


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionConfig:
    """How one connection behaves. Lists are in preference order.

    Attributes:
        role: client or server.
        kex_algorithms: key exchange methods.
        host_key_algorithms: host-key algorithms; a server offers only those it
            holds a key (or certificate) for.
        ciphers: encryption algorithms, both directions.
        macs: MAC algorithms (ignored when an AEAD cipher is chosen).
        host_keys: server only: its host keys and certificates.
        verify_host_key: client only: ``(host_key_blob, algorithm) -> bool``, a pure
            policy (known_hosts, host CA). ``None`` accepts any key: tests only.
        software_version: the part after ``SSH-2.0-`` in our identification line.
        rekey_bytes: start a re-exchange after this many bytes in either direction.
        rekey_seconds: ... or after this long (through ``get_timer``).
        max_auth_tries: server: authentication failures before disconnecting.
        auth_methods: server: methods offered, in order.
        pubkey_algorithms: server: signature algorithms accepted for user keys.
        window_size: the receive window we give each channel.
        max_packet: the largest CHANNEL_DATA we accept (and advertise).
        max_channels: open channels at once; more opens get RESOURCE_SHORTAGE.
        banner: server: text sent as USERAUTH_BANNER when user auth starts.
        server_sig_algs: server: the ``server-sig-algs`` extension (RFC 8308 §3.1);
            ``None`` derives it from ``pubkey_algorithms``.
    """

    role: Role
    kex_algorithms: Sequence[str] = DEFAULT_KEX_ALGORITHMS
    host_key_algorithms: Sequence[str] = DEFAULT_HOST_KEY_ALGORITHMS
    ciphers: Sequence[str] = DEFAULT_CIPHERS
    macs: Sequence[str] = DEFAULT_MACS
    host_keys: Sequence[HostKey] = ()
    verify_host_key: Callable[[bytes, str], bool] | None = None
    software_version: str = "trioport_0.1"
    rekey_bytes: int = 1 << 30
    rekey_seconds: float = 3600.0
    max_auth_tries: int = 6
    auth_methods: Sequence[str] = ("publickey",)
    pubkey_algorithms: Sequence[str] = DEFAULT_PUBKEY_ALGORITHMS
    window_size: int = 2 * 1024 * 1024
    max_packet: int = 128 * 1024
    max_channels: int = 100
    banner: str | None = None
    server_sig_algs: Sequence[str] | None = field(default=None)

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalise lists into tuples once
        if not isinstance(self.role, Role):
            raise ConfigError("must be Role.CLIENT or Role.SERVER", key="role")
        fix(self, "kex_algorithms", _names(self.kex_algorithms, "kex_algorithms", KEX_METHODS))
        fix(
            self,
            "host_key_algorithms",
            _names(self.host_key_algorithms, "host_key_algorithms", HOST_KEY_ALGORITHMS),
        )
        fix(self, "ciphers", _names(self.ciphers, "ciphers", ciphers.CIPHERS))
        fix(self, "macs", _names(self.macs, "macs", ciphers.MACS))
        fix(
            self,
            "pubkey_algorithms",
            _names(self.pubkey_algorithms, "pubkey_algorithms", HOST_KEY_ALGORITHMS),
        )
        fix(self, "host_keys", tuple(self.host_keys))
        methods = tuple(self.auth_methods)
        if not set(methods) <= AUTH_METHODS:
            raise ConfigError(f"methods must be among {sorted(AUTH_METHODS)}", key="auth_methods")
        fix(self, "auth_methods", methods)
        if self.server_sig_algs is None:
            plain = [a for a in self.pubkey_algorithms if not a.endswith(CERT_SUFFIX)]
            fix(self, "server_sig_algs", tuple(plain))
        else:
            fix(self, "server_sig_algs", tuple(self.server_sig_algs))
        version = self.software_version
        if not version or not version.isascii() or not version.isprintable() or " " in version:
            raise ConfigError("must be printable ASCII without spaces", key="software_version")
        if len(version) > 200:
            raise ConfigError("too long for a 255-byte identification line", key="software_version")
        if self.role is Role.SERVER and not self.host_keys:
            raise ConfigError("a server needs at least one host key", key="host_keys")
        _check_range(self.rekey_bytes, 4096, 1 << 62, "rekey_bytes")
        if not self.rekey_seconds > 0:
            raise ConfigError("must be positive", key="rekey_seconds")
        _check_range(self.max_auth_tries, 1, 1000, "max_auth_tries")
        _check_range(self.window_size, 1, 2**32 - 1, "window_size")
        _check_range(self.max_packet, 1, MAX_CHANNEL_PACKET, "max_packet")
        _check_range(self.max_channels, 1, 2**31, "max_channels")


def _check_range(value: int, low: int, high: int, key: str) -> None:
    if not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"must be an integer in {low}..{high}", key=key)
